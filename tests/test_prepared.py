"""Prepared corpora: the same bytes for any number of workers, the same tokens as the in-memory path, resumable,
and every bad directory refused before use with the shard or setting that is wrong."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import bertkit
from bertkit import Tokenizer
from bertkit.cli import main
from bertkit.corpus import read_documents
from bertkit.errors import DataError
from bertkit.prepare import PrepareOptions, prepare
from bertkit.prepared import MANIFEST_NAME, PreparedCorpus
from bertkit.tasks.pretraining import tokenize_documents

ARTICLES = ["北京举行新年音乐会。江泽民等出席。今天天气很好！", "人民日报发表社论。新年快乐！我们去上海。",
            "上海很大。", "the cat sat on the mat. it was happy.", "春节快到了。大家都回家过年。"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A directory of three files (one gzipped), 120 documents of one to three lines."""
    root = tmp_path_factory.mktemp("corpus")
    texts = ["\n".join(ARTICLES[(i + k) % len(ARTICLES)] for k in range(1 + i % 3)) for i in range(120)]
    (root / "a.txt").write_text("\n\n".join(texts[:50]) + "\n", encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_text("\n\n".join(texts[50:90]) + "\n", encoding="utf-8")
    (root / "c.txt.gz").write_bytes(gzip.compress(("\n\n".join(texts[90:]) + "\n").encode("utf-8")))
    (root / ".hidden").write_text("not read\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return Tokenizer.train(ARTICLES, vocab_size=120, min_frequency=1)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_same_bytes_for_one_and_two_workers_and_the_same_tokens_as_in_memory(corpus, tokenizer, tmp_path):
    options = PrepareOptions(whole_word=True, shard_chars=500, heldout_fraction=0.2, seed=3)
    one = prepare([corpus], tokenizer, tmp_path / "one", options=options, workers=1, progress=False)
    prepare([corpus], tokenizer, tmp_path / "two", options=options, workers=2, progress=False)
    assert len(one["splits"]["train"]["shards"]) > 4  # several shards, so the two workers really share the work
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    # every document is in exactly one split, with the tokens the in-memory path gives it
    documents = [d for name in ("a.txt", "sub/b.txt", "c.txt.gz") for d in read_documents(corpus / name)]
    expected = tokenize_documents(documents, tokenizer, whole_word=True)
    prepared = PreparedCorpus(tmp_path / "two", tokenizer)
    train, heldout = prepared.split("train"), prepared.split("heldout")
    assert len(train) + len(heldout) == len(expected) == 120 and 10 <= len(heldout) <= 40
    got = [[s.tolist() for s in train[i]] for i in range(len(train))] + \
          [[s.tolist() for s in heldout[i]] for i in range(len(heldout))]
    assert sorted(map(str, got)) == sorted(map(str, expected))
    assert prepared.whole_word and train.tokens == sum(len(s) for d in got[: len(train)] for s in d)


def test_every_shard_is_bounded_whatever_the_shape_of_the_text(tokenizer, tmp_path):
    """A file of one line, or without blank lines, was one document sent whole to one worker (198 MB of text held
    as 5.2 GB). Cut at max_document_chars, with a warning naming the file and line, no shard holds more than
    shard_chars + max_document_chars characters; the bytes are the same for one and two workers."""
    lines = [ARTICLES[i % len(ARTICLES)] for i in range(1500)]  # 25,000 characters
    shapes = {"one-line.txt": "".join(lines), "no-blank-lines.txt": "\n".join(lines) + "\n",
              "normal.txt": "\n\n".join("\n".join(lines[i : i + 3]) for i in range(0, len(lines), 3)) + "\n"}
    options = PrepareOptions(shard_chars=2000, max_document_chars=1500)
    for name, text in shapes.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = prepare([tmp_path / name], tokenizer, tmp_path / name.replace(".txt", ""), options=options,
                               workers=1, progress=False)
        train = manifest["splits"]["train"]
        assert max(r["characters"] for r in train["shards"]) < 2000 + 1500, name
        assert train["documents"] >= 25_000 // 1500 and len(train["shards"]) >= 25_000 // 3500, name
        messages = [str(w.message) for w in caught]
        # without blank lines, the first cut is before the line that takes the document past 1,500 characters
        over = next(n for n, size in enumerate(itertools.accumulate(map(len, lines)), start=1) if size > 1500)
        first_cut = {"one-line.txt": 1, "no-blank-lines.txt": over}.get(name)
        if first_cut is None:
            assert not messages
        else:
            assert messages[0].startswith(f"{tmp_path / name}:{first_cut}: over 1,500 characters without a blank")
    with pytest.warns(UserWarning) as caught:
        prepare([tmp_path / "one-line.txt"], tokenizer, tmp_path / "two", options=options, workers=2, progress=False)
    assert "cuts in all, into documents of at most 1,500 characters (at line 1)" in str(caught[-1].message)
    assert _files(tmp_path / "one-line") == _files(tmp_path / "two")


def test_an_interrupted_prepare_resumes_by_skipping_finished_shards(corpus, tokenizer, tmp_path):
    options = PrepareOptions(shard_chars=500)
    out = tmp_path / "out"
    prepare([corpus], tokenizer, out, options=options, workers=1, progress=False)
    complete = _files(out)
    # as if killed while writing shard 2: its record and an array are gone, and the manifest was never written
    (out / "train" / "shard-00002.json").unlink()
    (out / "train" / "shard-00002.tokens.npy").write_bytes(b"torn")
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="the prepare did not finish; run `bertkit prepare-data` again"):
        PreparedCorpus(out, tokenizer)
    before = {p: p.stat().st_mtime_ns for p in (out / "train").glob("shard-0000[0134]*")}
    prepare([corpus], tokenizer, out, options=options, workers=1, progress=False)
    assert _files(out) == complete
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished shards were not written again


def test_a_prepare_from_before_the_document_limit_is_continued_not_refused(corpus, tokenizer, tmp_path):
    """prepare.json written before max_document_chars existed lacks it: its documents were under the default, so a
    resume (pretrain --train --resume prepares again) continues the directory instead of refusing or redoing it."""
    out = tmp_path / "out"
    prepare([corpus], tokenizer, out, options=PrepareOptions(shard_chars=500), workers=1, progress=False)
    settings = json.loads((out / "prepare.json").read_text(encoding="utf-8"))
    del settings["options"]["max_document_chars"]
    (out / "prepare.json").write_text(json.dumps(settings), encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in (out / "train").glob("shard-*")}
    for replace_changed in (False, True):
        prepare([corpus], tokenizer, out, options=PrepareOptions(shard_chars=500), workers=1, progress=False,
                replace_changed=replace_changed)
        assert {p: p.stat().st_mtime_ns for p in before} == before
    with pytest.raises(DataError, match=r"other settings \(options: .*'max_document_chars': 1000000.* -> .*'max_d"):
        prepare([corpus], tokenizer, out, options=PrepareOptions(shard_chars=500, max_document_chars=99),
                workers=1, progress=False)


def test_bad_directories_are_refused_naming_what_is_wrong(corpus, tokenizer, tmp_path):
    out = tmp_path / "out"
    prepare([corpus], tokenizer, out, options=PrepareOptions(shard_chars=500), workers=1, progress=False)
    # another vocabulary
    other = Tokenizer.train([*ARTICLES, "完全不同的词汇表。"], vocab_size=140, min_frequency=1)
    with pytest.raises(DataError, match=r"prepared with another vocabulary \(\d+ tokens, sha256 \w{12}\)"):
        PreparedCorpus(out, other)
    # a damaged shard, named
    tokens = out / "train" / "shard-00001.tokens.npy"
    data = bytearray(tokens.read_bytes())
    data[-1] ^= 1
    tokens.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard train/shard-00001\.tokens\.npy does not match its sha256"):
        PreparedCorpus(out, tokenizer)
    # continuing a prepare with other settings
    with pytest.raises(DataError, match=r"holds a prepare with other settings \(options: .*whole_word"):
        prepare([corpus], tokenizer, out, options=PrepareOptions(shard_chars=500, whole_word=True), workers=1,
                progress=False)
    # no text at all
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no text in the input files"):
        prepare([empty], tokenizer, tmp_path / "none", workers=1, progress=False)
    # a damaged .gz is named by file
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.txt\.gz: read failed"):
        prepare([bad], tokenizer, tmp_path / "bad", workers=1, progress=False)


def test_prepare_data_command(corpus, tokenizer, tmp_path, capsys):
    tokenizer.save_pretrained(tmp_path / "vocab")
    out = tmp_path / "data"
    assert main(["prepare-data", str(corpus), "--tokenizer", str(tmp_path / "vocab"), "--output", str(out),
                 "--heldout-fraction", "0.1", "--workers", "1", "--shard-chars", "800", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    train = manifest["splits"]["train"]
    assert f"train: {train['documents']:,} documents" in printed
    assert train["documents"] + manifest["splits"]["heldout"]["documents"] == 120
    assert manifest["inputs"] == [str(corpus / "a.txt"), str(corpus / "c.txt.gz"), str(corpus / "sub" / "b.txt")]
    first = np.load(out / "train" / "shard-00000.tokens.npy", mmap_mode="r")
    assert first.dtype == np.uint32 and isinstance(first, np.memmap)
    with pytest.raises(SystemExit) as caught:
        main(["prepare-data", str(corpus), "--tokenizer", str(tmp_path / "vocab"), "--output", str(out),
              "--workers", "-1"])
    assert caught.value.code == 2
    assert "argument --workers: expected an integer from 0 to 1024" in capsys.readouterr().err
    # a file of one line of 1,000 sentences becomes documents of at most --max-document-chars characters
    one_line = tmp_path / "one-line.txt"
    one_line.write_text("北京欢迎你。" * 1000, encoding="utf-8")
    with pytest.warns(UserWarning) as warned:
        assert main(["prepare-data", str(one_line), "--tokenizer", str(tmp_path / "vocab"), "--output",
                     str(tmp_path / "one"), "--workers", "1", "--max-document-chars", "600", "--no-progress"]) == 0
    assert str(warned[0].message).startswith(f"{one_line}:1: over 600 characters without a blank line")
    assert "train: 10 documents, 1,000 sentences" in capsys.readouterr().out


SRC = Path(bertkit.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _children(pid: int) -> dict[int, tuple[str, str]]:
    """The processes whose parent is `pid`: pid -> (start time, command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
            if int(fields[1]) == pid:
                found[int(entry.name)] = (fields[19], command)
    return found


def _running(pid: int, started: str) -> bool:
    """Whether that process still runs: the same start time (not a reused pid), and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] == started and fields[0] != "Z"


def _wait_until_gone(processes: dict[int, tuple[str, str]], seconds: float) -> dict[int, str]:
    """Wait up to `seconds` for the processes to end; return those still running (pid -> command line)."""
    deadline = time.monotonic() + seconds
    while True:
        left = {pid: command for pid, (started, command) in processes.items() if _running(pid, started)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_kill_9_of_prepare_data_leaves_no_worker_or_resource_tracker_behind(tokenizer, tmp_path):
    """kill -9 of prepare-data used to leave its workers and multiprocessing's resource tracker running (~500 MB,
    still there 48 minutes later): now none of its processes outlives it by more than a few seconds. The workers,
    seen mid-run, hold no torch."""
    texts = ["\n".join(ARTICLES[(i + k) % len(ARTICLES)] for k in range(1 + i % 3)) for i in range(40_000)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts) + "\n", encoding="utf-8")  # 3.7 MB: about 10 s with 2 workers here
    tokenizer.save_pretrained(tmp_path / "vocab")
    out = tmp_path / "out"
    with open(tmp_path / "stderr.txt", "wb") as stderr:  # a file, not a pipe a survivor could hold open
        process = subprocess.Popen([sys.executable, "-m", "bertkit.cli", "prepare-data", str(corpus), "--tokenizer",
                                    str(tmp_path / "vocab"), "--output", str(out), "--workers", "2",
                                    "--shard-chars", "2000", "--no-progress"],
                                   env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    children: dict[int, tuple[str, str]] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            children = _children(process.pid)
            workers = [pid for pid, (_, command) in children.items() if "spawn_main" in command]
            if len(workers) == 2 and (out / "train" / "shard-00000.json").is_file():
                break  # mid-run: both workers started and writing shards
            time.sleep(0.05)
        assert process.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert len(workers) == 2 and any("resource_tracker" in c for _, c in children.values()), children
        # spawn imports the parent's main module (bertkit.cli) in each worker: it must not load torch (~190 MB each)
        assert not [pid for pid in workers if "libtorch" in Path(f"/proc/{pid}/maps").read_text()]
        process.kill()
        process.wait()
        assert not (out / MANIFEST_NAME).exists()  # it was killed before it finished
        left = _wait_until_gone(children, 5.0)
        assert not left, f"still running 5 s after their parent was killed: {left}"
    finally:
        process.kill()
        for pid, (started, _) in children.items():  # what this test started, should the check above fail
            if _running(pid, started):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_a_worker_without_the_parent_death_signal_ends_within_seconds_of_its_parent(tmp_path):
    """Where the kernel sends no signal (not Linux, or prctl refused), the worker's own thread sees its parent gone
    (it was adopted, so its parent pid changed) and ends it. Parent and worker are throwaway processes here."""
    worker = ("import sys, time; from bertkit import processes; processes.sys.platform = 'not linux'; "
              "processes.die_with_parent(int(sys.argv[1])); print('ready', flush=True); time.sleep(120)")
    parent = ("import os, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', sys.argv[1], "
              "str(os.getpid())], stdout=subprocess.PIPE); child.stdout.readline(); print(child.pid, flush=True); "
              "time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", parent, worker], env=ENV, stdout=subprocess.PIPE)
    children: dict[int, tuple[str, str]] = {}
    try:
        child = int(process.stdout.readline())
        children = {pid: info for pid, info in _children(process.pid).items() if pid == child}
        assert children, "the worker did not start"
        process.kill()
        process.wait()
        assert not _wait_until_gone(children, 5.0)
    finally:
        process.kill()
        for pid, (started, _) in children.items():
            if _running(pid, started):
                os.kill(pid, signal.SIGKILL)


def _pretrain(output: Path, *source: str) -> list[str]:
    return ["pretrain", *source, "--output-dir", str(output), "--model-size", "tiny", "--batch-size", "4",
            "--max-steps", "3", "--no-bf16", "--no-progress", "--seed", "1", "--max-seq-len", "32"]


def test_pretrain_on_a_prepared_directory_equals_pretrain_on_its_text(corpus, tokenizer, tmp_path, capsys):
    from safetensors.torch import load_file

    tokenizer.save_pretrained(tmp_path / "vocab")
    data = tmp_path / "data"
    assert main(["prepare-data", str(corpus), "--tokenizer", str(tmp_path / "vocab"), "--output", str(data),
                 "--whole-word-masking", "--workers", "1", "--no-progress"]) == 0
    # --data needs no --tokenizer (prepare-data keeps its vocabulary); --train prepares into the run directory
    assert main(_pretrain(tmp_path / "a", "--data", str(data), "--whole-word-masking")) == 0
    assert main(_pretrain(tmp_path / "b", "--train", str(corpus), "--tokenizer", str(tmp_path / "vocab"),
                          "--whole-word-masking")) == 0
    assert (tmp_path / "b" / "data" / "manifest.json").is_file()
    a, b = load_file(tmp_path / "a" / "model" / "model.safetensors"), load_file(tmp_path / "b" / "model" /
                                                                                  "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    capsys.readouterr()


def test_pretrain_refuses_a_bad_prepared_directory_before_training(corpus, tokenizer, tmp_path, capsys):
    tokenizer.save_pretrained(tmp_path / "vocab")
    data = tmp_path / "data"
    assert main(["prepare-data", str(corpus), "--tokenizer", str(tmp_path / "vocab"), "--output", str(data),
                 "--workers", "1", "--shard-chars", "800", "--no-progress"]) == 0
    capsys.readouterr()
    # whole-word masking asked of a corpus prepared without word starts
    assert main(_pretrain(tmp_path / "run", "--data", str(data), "--whole-word-masking")) == 2
    assert "prepared without --whole-word-masking" in capsys.readouterr().err
    # a model whose vocabulary is not the one the corpus was prepared with
    other = Tokenizer.train([*ARTICLES, "完全不同的词汇表。"], vocab_size=140, min_frequency=1)
    other.save_pretrained(tmp_path / "other")
    assert main(_pretrain(tmp_path / "run", "--data", str(data), "--tokenizer", str(tmp_path / "other"))) == 2
    assert "prepared with another vocabulary" in capsys.readouterr().err
    # a damaged shard, named, and nothing trained or written
    sentences = data / "train" / "shard-00002.sentences.npy"
    sentences.write_bytes(sentences.read_bytes()[:-8] + b"\xff" * 8)
    assert main(_pretrain(tmp_path / "run", "--data", str(data))) == 2
    assert "shard train/shard-00002.sentences.npy does not match its sha256" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
    # both sources, or neither
    with pytest.raises(SystemExit):
        main(_pretrain(tmp_path / "run", "--data", str(data), "--train", str(corpus)))
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_run_directory_keeps_its_prepared_text_through_overwrite_and_a_refused_resume(corpus, tokenizer, tmp_path,
                                                                                       capsys):
    tokenizer.save_pretrained(tmp_path / "vocab")
    run = tmp_path / "run"
    assert main(_pretrain(run, "--train", str(corpus), "--tokenizer", str(tmp_path / "vocab"))) == 0
    prepared = _files(run / "data")
    # found in review: --overwrite deleted the data/ it was given as --data, then failed to read it
    assert main(_pretrain(run, "--data", str(run / "data"), "--overwrite")) == 0
    assert _files(run / "data") == prepared
    # a resume with other text is refused before data/ is touched (it used to be deleted and prepared again)
    other = tmp_path / "other.txt"
    other.write_text("北京欢迎你。今天天气很好。\n\n新年快乐！我们去上海。\n", encoding="utf-8")
    assert main(_pretrain(run, "--train", str(other), "--tokenizer", str(tmp_path / "vocab"), "--resume")) == 2
    assert "holds a prepare with other settings (inputs:" in capsys.readouterr().err
    assert _files(run / "data") == prepared


def test_file_arrays_read_like_numpy_without_mapping_the_file(tmp_path):
    """Shards are read with pread, so what a run reads is not held in its RSS: slices, items and searchsorted (both
    sides, through the in-memory sample) equal numpy's; the file is never mapped; a pickled copy reads the same."""
    import pickle

    from bertkit.filearray import FileArray

    rng = np.random.default_rng(0)
    values = np.cumsum(rng.integers(0, 3, size=3000)).astype(np.int64)  # sorted, with runs of equal values
    path = tmp_path / "a.npy"
    np.save(path, values)
    array = FileArray(path)
    assert len(array) == len(values) and array.dtype == values.dtype
    for a, b in [(0, 10), (511, 1025), (2990, 5000), (-7, None), (100, 50)]:
        np.testing.assert_array_equal(array[a:b], values[a:b])
    assert array[0] == values[0] and array[-1] == values[-1] and array[1234] == values[1234]
    with pytest.raises(IndexError):
        array[3000]
    edges = [-1, values[0], values[-1], values[-1] + 1]
    probes = np.concatenate([edges, values[::97], rng.integers(-2, values[-1] + 3, 200)])
    for v in probes.tolist():
        for side in ("left", "right"):
            assert array.searchsorted(v, side=side) == int(np.searchsorted(values, v, side=side)), (v, side)
    np.testing.assert_array_equal(np.asarray(array), values)
    assert list(array)[:5] == values[:5].tolist()
    from bertkit.resume import data_fingerprint

    assert data_fingerprint([array, 1]) == data_fingerprint([values, 1])
    small = FileArray(path)  # the sample built over several reads gives the same answers
    small.SAMPLE, small.SAMPLE_BLOCK = 16, 3
    for v in probes.tolist()[:60]:
        assert small.searchsorted(v, side="right") == int(np.searchsorted(values, v, side="right"))
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()
    copy = pickle.loads(pickle.dumps(array))
    np.testing.assert_array_equal(copy[5:900], values[5:900])
    np.save(tmp_path / "b.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match="one-dimensional"):
        FileArray(tmp_path / "b.npy")
    # a cut file is refused when opened, not at the first read past its end in the middle of a run
    (tmp_path / "cut.npy").write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"cut\.npy: holds [\d,]+ bytes; its header describes [\d,]+ \(a cut or "
                                        r"damaged file\)"):
        FileArray(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    with pytest.raises(DataError, match=r"junk\.npy: not a \.npy array"):
        FileArray(tmp_path / "junk.npy")


# ---- a directory edited by hand: every file read is one the manifest lists, at its place, with its sha256 ----------

@pytest.fixture(scope="module")
def prepared(corpus, tokenizer, tmp_path_factory) -> Path:
    """A prepared corpus of several training shards and a held-out split, copied by each test that edits it."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([corpus], tokenizer, out, options=PrepareOptions(shard_chars=500, heldout_fraction=0.2, seed=3),
            workers=1, progress=False)
    return out


def _copy(prepared: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(prepared, tmp_path / "data"))


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _save(out: Path, manifest: dict, *records: tuple[str, dict]) -> None:
    """Write the manifest (its split totals summed again from the shard records, as a careful forger would) and the
    given shard records into their shard .json too: an edit consistent across the files."""
    for split in manifest["splits"].values():
        for field in ("documents", "sentences", "tokens", "characters"):
            if all(type(r[field]) is int for r in split["shards"]):
                split[field] = sum(r[field] for r in split["shards"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    for split, record in records:
        (out / split / f"shard-{record['index']:05d}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")


def _forge(out: Path, split: str, index: int, name: str, array: np.ndarray, **counts: int) -> None:
    """Replace one array of a shard and write its new sha256 (and `counts`) into its record and the manifest."""
    from bertkit.fileio import sha256_file

    path = out / split / f"shard-{index:05d}.{name}.npy"
    np.save(path, array)
    manifest = _manifest(out)
    record = manifest["splits"][split]["shards"][index]
    record["files"][path.name] = sha256_file(path)
    record.update(counts)
    _save(out, manifest, (split, record))


def test_a_record_naming_another_shards_files_is_refused(prepared, tokenizer, tmp_path):
    """Shard 1's record claims shard 0's files (whose sha256 match), so shard 1's own files, now other tokens,
    would be read unhashed: each record must name its own shard's files."""
    out = _copy(prepared, tmp_path)
    manifest = _manifest(out)
    records = manifest["splits"]["train"]["shards"]
    records[1] = {**records[0], "index": 1}
    _save(out, manifest, ("train", records[1]))
    tokens = np.load(out / "train" / "shard-00000.tokens.npy")
    np.save(out / "train" / "shard-00001.tokens.npy", tokens)
    np.save(out / "train" / "shard-00001.sentences.npy", np.load(out / "train" / "shard-00000.sentences.npy"))
    np.save(out / "train" / "shard-00001.documents.npy", np.load(out / "train" / "shard-00000.documents.npy"))
    with pytest.raises(DataError, match=r"manifest\.json: train/shard-00001: the record lists shard-00000\.documents"
                                        r"\.npy, shard-00000\.sentences\.npy, shard-00000\.tokens\.npy; expected "
                                        r"shard-00001\.documents\.npy"):
        PreparedCorpus(out, tokenizer)


@pytest.mark.parametrize("edit", ["listed twice", "dropped last", "dropped in the middle", "extra file on disk",
                                  "listed file missing", "held-out files without a held-out split"])
def test_a_manifest_must_list_exactly_the_shards_on_disk_in_order(prepared, tokenizer, tmp_path, edit):
    out = _copy(prepared, tmp_path)
    manifest = _manifest(out)
    records = manifest["splits"]["train"]["shards"]
    last = len(records) - 1
    if edit == "listed twice":  # shard 0 read twice, shard 1 never
        records[1] = records[0]
        expected = r"manifest\.json: train shard 1 is recorded as shard 0: each shard is listed once, in order"
    elif edit == "dropped last":
        records.pop()
        expected = rf"train/shard-{last:05d}\.documents\.npy is not in the manifest \(it lists train shards 0 to " \
                   rf"{last - 1}\)"
    elif edit == "dropped in the middle":
        del records[2]
        expected = r"train shard 2 is recorded as shard 3"
    elif edit == "extra file on disk":
        np.save(out / "train" / "shard-00099.tokens.npy", np.zeros(3, dtype=np.uint32))
        expected = r"train/shard-00099\.tokens\.npy is not in the manifest"
    elif edit == "listed file missing":
        (out / "train" / "shard-00002.documents.npy").unlink()
        expected = r"train/shard-00002\.documents\.npy.* missing"
    else:
        del manifest["splits"]["heldout"]
        expected = r"heldout/shard-00000\.documents\.npy is not in the manifest \(it lists no heldout shards\)"
    _save(out, manifest)
    with pytest.raises(DataError, match=expected):
        PreparedCorpus(out, tokenizer)
    # the structure is checked even where the hashes are not (the other DDP ranks; a corpus prepare() just wrote)
    with pytest.raises(DataError, match=expected):
        PreparedCorpus(out, tokenizer, verify=False)


@pytest.mark.parametrize("value", ["12", 12.0, True, None, -1])
@pytest.mark.parametrize("where", ["manifest", "shard"])
def test_a_count_that_is_not_an_integer_is_refused_naming_the_file_and_field(prepared, tokenizer, tmp_path, where,
                                                                            value):
    out = _copy(prepared, tmp_path)
    if where == "manifest":
        manifest = _manifest(out)
        manifest["splits"]["train"]["shards"][1]["documents"] = value
        _save(out, manifest)
        expected = r"manifest\.json: train shard 1: 'documents' must be an integer >= 0, got "
    else:
        path = out / "train" / "shard-00001.json"
        record = json.loads(path.read_text(encoding="utf-8"))
        record["tokens"] = value
        path.write_text(json.dumps(record), encoding="utf-8")
        expected = r"train/shard-00001\.json: 'tokens' must be an integer >= 0, got "
    with pytest.raises(DataError, match=expected + re.escape(repr(value))):
        PreparedCorpus(out, tokenizer)


def test_a_shard_json_that_disagrees_with_the_manifest_is_refused(prepared, tokenizer, tmp_path):
    out = _copy(prepared, tmp_path)
    path = out / "train" / "shard-00003.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    record["sentences"] += 1
    path.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(DataError, match=r"train/shard-00003\.json: sentences \d+ here, \d+ in manifest\.json"):
        PreparedCorpus(out, tokenizer)


@pytest.mark.parametrize("forgery", ["token count", "sentence offsets past the tokens", "offsets going back",
                                     "token id past the vocabulary", "float tokens"])
def test_arrays_that_do_not_match_their_record_are_refused_though_their_sha256_does(prepared, tokenizer, tmp_path,
                                                                                    forgery):
    """Each forged array's sha256 is written into its record and the manifest: only the checks of the arrays
    against the counts, each other and the vocabulary see it (a run would otherwise fail mid-way, or read past a
    sentence)."""
    out = _copy(prepared, tmp_path)
    shard = out / "train" / "shard-00002"
    tokens = np.load(f"{shard}.tokens.npy")
    sentences = np.load(f"{shard}.sentences.npy")
    if forgery == "token count":
        _forge(out, "train", 2, "tokens", tokens[:-1])
        expected = r"train/shard-00002\.tokens\.npy: holds \d+ values; its record says \d+ tokens"
    elif forgery == "sentence offsets past the tokens":
        _forge(out, "train", 2, "sentences", np.concatenate([sentences[:-1], [len(tokens) + 5]]))
        expected = r"train/shard-00002\.sentences\.npy: its last offset is \d+; the shard has \d+ tokens"
    elif forgery == "offsets going back":
        sentences[2] = sentences[1] - 1
        _forge(out, "train", 2, "sentences", sentences)
        expected = r"train/shard-00002\.sentences\.npy: offset 2 \(-?\d+\) is below the one before it"
    elif forgery == "token id past the vocabulary":
        tokens[5] = tokenizer.vocab_size + 7
        _forge(out, "train", 2, "tokens", tokens)
        expected = rf"train/shard-00002\.tokens\.npy: token 5 has id {tokenizer.vocab_size + 7}; the vocabulary " \
                   rf"has {tokenizer.vocab_size}"
    else:
        _forge(out, "train", 2, "tokens", tokens.astype(np.float32))
        expected = r"train/shard-00002\.tokens\.npy: float32 values; expected uint32"
    with pytest.raises(DataError, match=expected):
        PreparedCorpus(out, tokenizer)


def test_a_resume_on_a_corpus_with_any_shard_changed_is_refused(prepared, tokenizer, tmp_path, capsys):
    """A shard rewritten with all its records consistent is a valid corpus, only another one: its digest (what
    the run's checkpoint records) differs, so `--resume` on it is refused; held-out shards count too (they make
    the evaluations a run logs)."""
    out = _copy(prepared, tmp_path)
    assert main(_pretrain(tmp_path / "run", "--data", str(out))) == 0
    for split in ("heldout", "train"):
        tokens = np.load(out / split / "shard-00000.tokens.npy")
        _forge(out, split, 0, "tokens", tokens[::-1].copy())
        PreparedCorpus(out, tokenizer)  # a valid corpus
        capsys.readouterr()
        assert main(_pretrain(tmp_path / "run", "--data", str(out), "--resume")) == 2
        assert re.search(r"--resume: this run differs from the one that wrote .*step-00000003: data \(sha256 of "
                         r"the encoded examples\) [0-9a-f]{12} -> [0-9a-f]{12}\.", capsys.readouterr().err)
