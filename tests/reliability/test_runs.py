"""Run directories: one run per directory, no fresh run over an old one, resume refuses changed settings or data,
unwritable directories fail before training, torn metrics, a second Ctrl-C, a killed batch worker, batch workers
that end with their run, the umask, and CLI number checks."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertConfig, BertForPreTraining, Tokenizer
from bertkit.cli import main
from bertkit.rundir import latest_checkpoint, plot_curves, verify_checkpoint
from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask, tokenize_documents
from bertkit.train import TrainConfig, TrainingError, fit

REPO = Path(__file__).resolve().parents[2]
DOCS = [["北京欢迎你。", "今天天气很好。"], ["人民日报发表社论。", "新年快乐！"], ["我们去上海。", "上海很大。"]]
OTHER_DOCS = [["上海欢迎你。", "明天天气很好。"], ["人民日报发表新闻。", "快乐！"], ["我们去北京。", "北京很大。"]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([s for d in DOCS + OTHER_DOCS for s in d], vocab_size=80, min_frequency=1)


class CountingTask(PretrainingTask):
    """Counts loss calls, to show what ran before a refusal."""

    calls = 0

    def loss(self, model, batch):
        self.calls += 1
        return super().loss(model, batch)


def _task(tokenizer: Tokenizer, docs: list[list[str]] = DOCS) -> CountingTask:
    encoded = tokenize_documents(docs * 10, tokenizer)
    return CountingTask.from_documents(tokenizer, encoded, encoded[:3], PretrainingOptions(max_seq_len=32))


def _model(tokenizer: Tokenizer) -> BertForPreTraining:
    torch.manual_seed(0)
    return BertForPreTraining(BertConfig.preset("tiny", vocab_size=len(tokenizer)))


def _config(output: Path, **overrides) -> TrainConfig:
    values = {"output_dir": str(output), "batch_size": 4, "max_steps": 4, "save_every": 2, "lr": 1e-3,
              "warmup": 1, "log_every": 1, "progress": False, "bf16": False}
    return TrainConfig(**{**values, **overrides})


def _steps(run: Path, kind: str = "train") -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == kind]


# ---- CLI runs ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("北京举行新年音乐会。江泽民等出席。\n今天天气很好。\n\n人民日报发表社论。新年快乐！\n" * 40,
                    encoding="utf-8")
    return path


def _pretrain(corpus: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bertkit.cli", "pretrain", "--train", str(corpus), "--output-dir", str(output),
            "--model-size", "tiny", "--batch-size", "8", "--max-seq-len", "32", "--vocab-size", "100",
            "--no-bf16", "--no-progress", "--log-every", "1", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}


def _wait_for_checkpoint(process: subprocess.Popen, run: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any((run / "checkpoints").glob("step-*/checkpoint.json")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never wrote a checkpoint"
        time.sleep(0.05)


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen(_pretrain(corpus, run, "--max-steps", "100000", "--save-every", "2"), env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint(first, run)
        for flags in ((), ("--resume",), ("--overwrite",)):  # none may take a directory in use
            assert main(_pretrain(corpus, run, "--max-steps", "2", *flags)[3:]) == 2
            err = capsys.readouterr().err
            assert f"is in use by another run (PID {first.pid})" in err and err.count("\n") == 1, err
        assert first.poll() is None and not (run / "model").exists()  # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # a run killed -9 leaves no stale lock: the kernel released it with the process
    assert main(_pretrain(corpus, run, "--max-steps", "2", "--overwrite")[3:]) == 0
    assert _steps(run) == [1, 2]


def test_a_second_ctrl_c_cannot_cut_the_save_the_first_announced(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    # every checkpoint write takes a second longer, so the later Ctrl-Cs surely land inside the save (signals sent
    # while the main thread is in one long torch op would otherwise coalesce into one Python-level handler call)
    slow_save = ("import sys, time; import bertkit.rundir as r; write = r.write_checkpoint; "
                 "r.write_checkpoint = lambda *a, **k: (time.sleep(1.0), write(*a, **k))[1]; "
                 "from bertkit.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = _pretrain(corpus, run, "--max-steps", "100000", "--save-every", "3")
    process = subprocess.Popen([sys.executable, "-c", slow_save, *argv[3:]], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(process, run)
    process.send_signal(signal.SIGINT)
    lines = []
    while not lines or not lines[-1].startswith("interrupted at step"):  # the first Ctrl-C was handled
        line = process.stdout.readline()
        assert line, "the run ended without announcing the interrupt"
        lines.append(line.strip())
    for _ in range(2):  # an impatient user: two more Ctrl-C while the announced save is being written
        process.send_signal(signal.SIGINT)
        time.sleep(0.02)
    rest, err = process.communicate(timeout=120)
    out = "\n".join(lines) + "\n" + rest
    assert process.returncode == 130, err[-2000:]
    announced = [line for line in out.splitlines() if line.startswith("interrupted at step")]
    assert len(announced) == 1, out
    step = int(announced[0].split()[3].rstrip(":"))
    saved = run / "checkpoints" / f"step-{step:08d}"
    assert f"checkpoint saved: {saved}" in out
    assert err.count("still saving the checkpoint: Ctrl-C is ignored until it is written") == 2, err
    assert latest_checkpoint(run) == saved and verify_checkpoint(saved) is not None
    assert not list((run / "checkpoints").glob(".tmp-*"))
    argv = _pretrain(corpus, run, "--save-every", "3", "--resume", "--allow-resume-changes", "--max-steps",
                     str(step + 1))[3:]
    with pytest.warns(UserWarning, match=f"max_steps 100000 -> {step + 1}"):
        assert main(argv) == 0
    assert f"resumed from {saved} at step {step}" in capsys.readouterr().out


def _batch_workers(process: subprocess.Popen, run: Path, timeout: float = 120) -> list[int]:
    """The PIDs of a run's two batch workers (its children forked from it: the same command line), once it trains."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never started its batch workers"
        own = _cmdline(process.pid)  # read each time: right after Popen the child may not have exec'd yet
        children = [int(pid) for task in Path(f"/proc/{process.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()]
        workers = sorted(pid for pid in children if _cmdline(pid) == own)
        if len(workers) == 2 and (run / "metrics.jsonl").is_file() and _steps(run):
            return workers
        time.sleep(0.05)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected


needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers in /proc (Linux)")


@needs_proc
def test_a_killed_batch_worker_ends_the_run_in_one_line_with_a_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    argv = _pretrain(corpus, run, "--max-steps", "100000", "--save-every", "100000", "--workers", "2")
    process = subprocess.Popen(argv, env={**_env(), "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        victim = _batch_workers(process, run)[-1]
        os.kill(victim, signal.SIGKILL)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    found = re.fullmatch(rf"bertkit pretrain: error: batch worker [01] of 2 \(PID {victim}\) was killed by signal "
                         r"SIGKILL \(kill -9, or the kernel's out-of-memory killer\), at step (\d+); the run stopped "
                         r"there and saved a checkpoint: (.+) \(continue with --resume\)", lines[0])
    assert found, lines[0]
    step, saved = int(found[1]), Path(found[2])
    assert saved == run / "checkpoints" / f"step-{step:08d}" and step >= 1
    assert latest_checkpoint(run) == saved and verify_checkpoint(saved) is not None
    assert f"checkpoint saved: {saved}" in out
    resumed = subprocess.run(_pretrain(corpus, run, "--max-steps", str(step + 2), "--resume", "--allow-resume-changes",
                                       "--workers", "2"), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {saved} at step {step}" in resumed.stdout
    assert _steps(run)[-3:] == [step, step + 1, step + 2]


@needs_proc
def test_batch_workers_end_with_a_killed_run_and_leave_its_directory_free(tmp_path, corpus):
    import fcntl

    run = tmp_path / "run"
    process = subprocess.Popen(_pretrain(corpus, run, "--max-steps", "100000", "--workers", "2"), env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = _batch_workers(process, run)
    finally:
        process.kill()
        process.wait()
    # at once: no worker holds a copy of the run's lock, so a --resume now is not told the directory is in use
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    deadline = time.monotonic() + 2.0  # torch's own check of the parent comes every 5 s
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(map(_alive, workers)), [pid for pid in workers if _alive(pid)]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_honour_the_umask(tmp_path, corpus, umask):
    run = tmp_path / "run"
    subprocess.run(_pretrain(corpus, run, "--max-steps", "2"), env=_env(), check=True, capture_output=True,
                   timeout=300, preexec_fn=lambda: os.umask(umask))
    files = [p for p in run.rglob("*") if p.is_file()]
    dirs = [p for p in run.rglob("*") if p.is_dir()]
    assert {"model.safetensors", "training_state.pt", "metrics.jsonl", "curves.png", "vocab.txt"} <= {
        p.name for p in files}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~umask)}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs} == {oct(0o777 & ~umask)}


# ---- in-process runs -----------------------------------------------------------------------------------------------

def test_a_fresh_run_over_an_old_one_is_refused_and_overwrite_replaces_it(tmp_path, tokenizer, capsys, corpus):
    run = tmp_path / "run"
    fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=4))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    task = _task(tokenizer)
    with pytest.raises(TrainingError, match=r"already holds a run \(checkpoints, model, metrics\.jsonl\); pass "
                                            r"--resume to continue it, --overwrite to delete it"):
        fit(_model(tokenizer), task, _config(run, max_steps=2))
    assert task.calls == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # the CLI says the same in one line, exit 2
    assert main(_pretrain(corpus, run, "--max-steps", "2")[3:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
    # --overwrite: the old run's checkpoints, model and log are gone, not mixed with the new run's
    fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=2, overwrite=True))
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000002"]
    assert _steps(run) == [1, 2]
    model, checkpoint = load_file(run / "model" / "model.safetensors"), load_file(
        run / "checkpoints" / "step-00000002" / "model.safetensors")
    assert all(torch.equal(model[k], checkpoint[k]) for k in model)


def test_overwrite_with_bad_input_deletes_nothing_and_a_failed_pretrain_releases_the_lock(tmp_path, corpus, capsys):
    # found in review: `pretrain --overwrite` cleared the old run before it read --train, then stopped at the typo
    run = tmp_path / "run"
    assert main(_pretrain(corpus, run, "--max-steps", "2")[3:]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(_pretrain(tmp_path / "typo.txt", run, "--max-steps", "2", "--overwrite")[3:]) == 2
    assert "typo.txt: file not found" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # continuing from the run's own model with --overwrite: the model is read before the directory is cleared
    assert main(_pretrain(corpus, run, "--max-steps", "2", "--overwrite", "--init-from", str(run / "model"))[3:]) == 0
    # a pretrain that stops after claiming the directory must
    # not keep it locked for the rest of the process (the model's position table is shorter than 1024)
    assert main(_pretrain(corpus, tmp_path / "other", "--max-steps", "2", "--max-seq-len", "1024",
                          "--init-from", str(run / "model"))[3:]) == 2
    assert "max_seq_len 1024 exceeds" in capsys.readouterr().err
    from bertkit.rundir import held_run_dir

    assert not held_run_dir(tmp_path / "other")
    other = subprocess.run(_pretrain(corpus, tmp_path / "other", "--max-steps", "2", "--overwrite"), env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr


def test_resume_refuses_a_changed_lr_naming_it_and_applies_it_when_allowed(tmp_path, tokenizer):
    run = tmp_path / "run"
    fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=3))
    task = _task(tokenizer)
    with pytest.raises(TrainingError, match=r"--resume: this run differs from the one that wrote .*step-00000003: "
                                            r"lr 0\.001 -> 0\.002\. Resume with the old settings"):
        fit(_model(tokenizer), task, _config(run, max_steps=3, lr=2e-3, resume=True))
    assert task.calls == 0
    with pytest.warns(UserWarning, match=r"resuming with changes .*lr 0\.001 -> 0\.002; max_steps 3 -> 6"):
        fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=6, lr=2e-3, resume=True,
                                                         allow_resume_changes=True))
    records = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "train"}
    assert sorted(records) == [1, 2, 3, 4, 5, 6]
    # the new peak lr on the new schedule (6 steps, warmup 1): after step s the multiplier is (6 - s) / 5
    for s in (4, 5):
        assert records[s]["lr"] == pytest.approx(2e-3 * (6 - s) / 5)


def test_resume_refuses_different_training_data(tmp_path, tokenizer):
    run = tmp_path / "run"
    fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=2))
    with pytest.raises(TrainingError, match=r"differs .*: data \(sha256 of the encoded examples\) "
                                            r"[0-9a-f]{12} -> [0-9a-f]{12}\."):
        fit(_model(tokenizer), _task(tokenizer, OTHER_DOCS), _config(run, max_steps=2, resume=True))
    # the same data again is accepted (the fingerprint is stable across processes' task objects)
    fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=2, resume=True))
    with pytest.warns(UserWarning, match=r"data \(sha256 of the encoded examples\)"):
        fit(_model(tokenizer), _task(tokenizer, OTHER_DOCS), _config(run, max_steps=2, resume=True,
                                                                     allow_resume_changes=True))


def test_resuming_a_checkpoint_without_a_data_fingerprint_says_so(tmp_path, tokenizer):
    class OlderRun(CountingTask):  # as a checkpoint written before fingerprints existed
        @property
        def fingerprint(self):
            raise AttributeError("fingerprint")

    run = tmp_path / "run"
    base = _task(tokenizer)
    fit(_model(tokenizer), OlderRun(tokenizer, base.train, base.heldout, base.options),
        _config(run, max_steps=2))
    with pytest.warns(UserWarning, match="records no training-data fingerprint .* cannot be checked"):
        fit(_model(tokenizer), _task(tokenizer, OTHER_DOCS), _config(run, max_steps=3, save_every=0, resume=True,
                                                                     allow_resume_changes=True))


@pytest.mark.parametrize("where", ["/sys", "/sys/bertkit-run", "under-a-file"])
def test_an_unwritable_output_dir_fails_before_the_first_step(tmp_path, tokenizer, where):
    # tests run as root, which chmod does not stop: sysfs refuses new files even to root
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        where = str(tmp_path / "file" / "run")
    elif not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    task = _task(tokenizer)
    with pytest.raises(TrainingError, match=r"^--output-dir.*: cannot (write|create)") as error:
        fit(_model(tokenizer), task, _config(Path(where)))
    assert where in str(error.value)
    assert task.calls == 0


def test_a_torn_metrics_line_neither_blocks_resume_nor_the_plot(tmp_path, tokenizer):
    run = tmp_path / "run"
    fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=4))
    # as after a kill -9 mid-append at step 4, before its checkpoint completed
    import shutil

    shutil.rmtree(run / "checkpoints" / "step-00000004")
    shutil.rmtree(run / "model")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 5, "lo')
    with pytest.warns(UserWarning, match=r"1 unreadable line\(s\) not plotted"):
        assert plot_curves(run / "metrics.jsonl", tmp_path / "curves.png", "t") == tmp_path / "curves.png"
    with pytest.warns(UserWarning, match=r"1 unreadable line\(s\) \(a write cut short by a crash\) dropped"):
        fit(_model(tokenizer), _task(tokenizer), _config(run, max_steps=4, resume=True))
    assert _steps(run) == [1, 2, 3, 4]  # each step once, the torn record gone, every line valid JSON


# ---- numbers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--batch-size", "0", "an integer >= 1"), ("--lr", "nan", "a finite number > 0"),
    ("--lr", "0", "a finite number > 0"), ("--max-steps", "-1", "an integer >= 0"),
    ("--epochs", "inf", "a finite number >= 0"), ("--warmup", "-0.1", "a finite number >= 0"),
    ("--seed", "-3", "an integer >= 0"), ("--keep-checkpoints", "0", "an integer >= 1"),
    ("--max-grad-norm", "nan", "a finite number >= 0"), ("--grad-accum", "1.5", "an integer >= 1"),
])
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_invalid_numbers_are_usage_errors_naming_the_flag(capsys, flag, value, expected, command):
    argv = [command, "--train", "x", flag, value] + (["--task", "classification"] if command == "finetune" else [])
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected {expected}, got '{value}'" in capsys.readouterr().err


def test_contradictory_flags_and_non_finite_config_values_are_refused(capsys, tmp_path):
    assert main(["pretrain", "--train", "x", "--resume", "--overwrite", "--output-dir", str(tmp_path)]) == 2
    assert "give resume (continue the run) or overwrite (replace it), not both" in capsys.readouterr().err
    for field, value in (("lr", float("nan")), ("epochs", float("inf")), ("weight_decay", float("nan"))):
        with pytest.raises(ValueError, match=f"TrainConfig.{field} must be a finite number"):
            TrainConfig(**{field: value})


def test_ctrl_c_during_a_save_waits_for_it():
    from bertkit.interrupt import InterruptGuard

    with InterruptGuard() as guard:  # found in review: a first Ctrl-C during the final save cut it
        guard.saving = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs between bytecodes: it must not raise here
        assert guard.pressed == 1
    with InterruptGuard(), pytest.raises(KeyboardInterrupt):  # outside a save, the first Ctrl-C stops the run
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_ctrl_c_inside_an_update_saves_the_step_it_completes(tmp_path, tokenizer):
    """A Ctrl-C that comes while the optimizer changes the weights (sent here from the update itself) waits until
    the step is counted: the checkpoint is of step 2 with step 2's weights, not called step 1."""
    reference = tmp_path / "reference"
    fit(_model(tokenizer), _task(tokenizer), _config(reference, max_steps=6, save_every=2, keep_checkpoints=3))
    updates = []

    def ctrl_c_in_the_second_update(optimizer, args, kwargs):
        updates.append(optimizer)
        if len(updates) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, before the update returns

    from torch.optim.optimizer import register_optimizer_step_post_hook

    hook = register_optimizer_step_post_hook(ctrl_c_in_the_second_update)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(_model(tokenizer), _task(tokenizer), _config(tmp_path / "run", max_steps=6, save_every=0))
    finally:
        hook.remove()
    saved = latest_checkpoint(tmp_path / "run")
    assert saved is not None and saved.name == "step-00000002"
    got, expected = (load_file(run / "model.safetensors") for run in (saved, reference / "checkpoints" / saved.name))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_ctrl_c_during_the_final_evaluation_still_saves_the_trained_steps(tmp_path, tokenizer):
    class InterruptedEval(CountingTask):
        def evaluate(self, model):
            raise KeyboardInterrupt

    run = tmp_path / "run"
    base = _task(tokenizer)
    task = InterruptedEval(tokenizer, base.train, base.heldout, base.options)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(tokenizer), task, _config(run, max_steps=3, save_every=0))
    newest = latest_checkpoint(run)
    assert newest is not None and newest.name == "step-00000003" and verify_checkpoint(newest) is not None
