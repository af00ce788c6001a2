"""Silent data loss and unreadable input (issue 11, data): every dropped, cut or repaired example is counted and
reported, every reader names what is wrong with a file, and nothing is lost without a word."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit import BertConfig, BertModel, DataError, Tokenizer, fileio
from bertkit.corpus import read_documents
from bertkit.masking import ArrayShard, ExampleIndex
from bertkit.tasks import classification, embed, intent_slot, ner, qa, relation, spelling
from bertkit.tasks.base import normalise_label, take
from bertkit.tasks.pretraining import PretrainingOptions, PretrainingTask, tokenize_documents
from bertkit.train import TrainConfig

CHARS = "北京欢迎你今天天气很好我们去上海人民日报发表社论新年快乐"
SQUAD = {"data": [{"paragraphs": [{"context": "北京欢迎你。", "qas": [
    {"id": "q1", "question": "谁欢迎你？", "answers": [{"text": "北京", "answer_start": 0}]}]}]}]}


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("vocab")
    tok = Tokenizer.train([CHARS, "hello world apple pear plum fig good bad", "<e1> </e1> <e2> </e2>"] * 3,
                          vocab_size=120, min_frequency=1)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture()
def no_training(monkeypatch):
    """finetune() runs everything up to the training loop (reading, checks, encoding, model); fit is stubbed."""
    calls = []
    monkeypatch.setattr("bertkit.train.fit", lambda model, task, config, title="": calls.append(task) or task)
    return calls


def _config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "run"), batch_size=4, max_steps=1, progress=False, bf16=False)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# one small valid training file per task: (module, format, writer)
def _cls(d: Path) -> Path:
    return _write(d / "train.tsv", "label\ttext\n1\tgood apple\n0\tbad pear\n1\tgood fig\n0\tbad plum\n")


def _ner(d: Path) -> Path:
    return _write(d / "train.bio", "北 B-LOC\n京 I-LOC\n好 O\n\n上 B-LOC\n海 I-LOC\n\n")


def _rel(d: Path) -> Path:
    return _write(d / "train.txt", "A(e1,e2)\t<e1> apple </e1> good <e2> pear </e2>\n"
                                   "Other\t<e1> fig </e1> bad <e2> plum </e2>\n")


def _spell(d: Path) -> Path:
    return _write(d / "train.tsv", "北京欢迎泥\t北京欢迎你\n今天天气很号\t今天天气很好\n")


def _qa(d: Path) -> Path:
    return _write(d / "train.json", json.dumps(SQUAD, ensure_ascii=False))


def _atis(d: Path) -> Path:
    _write(d / "atis" / "seq.in", "good apple\nbad pear\n")
    _write(d / "atis" / "seq.out", "O B-fruit\nO B-fruit\n")
    _write(d / "atis" / "label", "buy\nsell\n")
    return d / "atis"


TASKS = {"classification": (classification, "tsv", _cls), "ner": (ner, "conll", _ner),
         "relation": (relation, "semeval", _rel), "spelling": (spelling, "tsv", _spell), "qa": (qa, "squad", _qa),
         "intent_slot": (intent_slot, "atis", _atis)}


def _finetune(name: str, tmp_path: Path, vocab_dir: Path, **kwargs):
    module, fmt, writer = TASKS[name]
    return module.finetune(writer(tmp_path / "data"), _config(tmp_path), fmt=fmt, tokenizer=vocab_dir,
                           model_size="tiny", max_seq_len=kwargs.pop("max_seq_len", 32), **kwargs)


# ---- NSP: long sentences are split and used -------------------------------------------------------------------
def test_nsp_splits_a_5000_token_sentence_and_uses_its_tokens():
    long_document = [list(range(10_000, 15_000))]  # one sentence of 5,000 tokens
    other = [[1, 2, 3], [4, 5, 6, 7]]
    covered: set[int] = set()
    shard = ArrayShard.from_documents([long_document, other])
    for epoch in range(5):  # a NotNext example uses only its A (B is random): over epochs each chunk is IsNext once
        index = ExampleIndex([shard], 128, nsp=True, seed=0, epoch=epoch)
        instances = index.instances()
        for inst in instances:
            covered.update(t for t in inst.tokens_a if t >= 10_000)
            if inst.next_label == 0:
                covered.update(t for t in inst.tokens_b if t >= 10_000)
        assert index.stats["split_sentences"] == 1
        assert len([i for i in instances if i.source_a == 0]) >= 35  # 0 before the split (80 pieces of 63 tokens)
        assert all(len(i.tokens_a) + len(i.tokens_b) <= 125 for i in instances)
    assert len(covered) / 5000 > 0.95, len(covered)  # the rest is Google's pair truncation (1 token a pair)


@pytest.mark.filterwarnings("ignore:training corpus.*one-sentence")  # the short second document: expected
def test_nsp_long_line_corpus_gives_instances_and_warns(tmp_path):
    corpus = _write(tmp_path / "corpus.txt", CHARS * 200 + "\n\n" + "北京欢迎你。今天天气很好。\n")
    documents = list(read_documents(corpus))  # the long line is cut into 256-character pieces, 256 tokens each
    tok = Tokenizer.train([CHARS], vocab_size=60, min_frequency=1)
    docs = tokenize_documents(documents, tok)
    task = PretrainingTask.from_documents(tok, docs, [], PretrainingOptions(max_seq_len=128))
    with pytest.warns(UserWarning, match=r"training corpus: \d+ sentence\(s\) of max_seq_len - 3 = 125 tokens"):
        count = task.num_examples(0)
    from_long = [i for i in task.instances(0) if i.source_a == 0]
    assert count > 0 and len(from_long) >= len(documents[0]) - 2


def test_pretrain_single_document_is_a_data_error(tmp_path):
    from bertkit.tasks.pretraining import pretrain

    corpus = _write(tmp_path / "one.txt", "北京欢迎你。\n今天天气很好。\n")
    with pytest.raises(DataError, match=r"one\.txt: the training text has one document; NSP needs two"):
        pretrain([corpus], _config(tmp_path), tokenizer=Tokenizer.train([CHARS], vocab_size=60, min_frequency=1))


# ---- TSV columns, labels, limit, empty files ------------------------------------------------------------------
def test_extra_tsv_column_is_an_error_naming_the_line(tmp_path):
    path = _write(tmp_path / "train.tsv", "label\ttext\n1\tgood\n0\tbad\textra words\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: expected 2 columns separated by '\\t', got 3"):
        classification.read_examples(path, "tsv")


def test_integral_labels_are_one_class_and_lists_are_refused(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 1.0}, {"text": "c", "label": "1"},
            {"text": "d", "label": 0}, {"text": "e", "label": True}, {"text": "f", "label": 0.5}]
    path = _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    labels = [e.label for e in classification.read_examples(path, "jsonl")]
    assert labels == ["1", "1", "1", "0", "true", "0.5"]
    bad = _write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": ["x"]}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: label must be a string, number or boolean, got a JSON array"):
        classification.read_examples(bad, "jsonl")
    with pytest.raises(DataError, match="not a finite number"):
        normalise_label(float("nan"), "f", 1)
    # a blank label is no label (found in review: it trained a class "" that task.json's checks then refused)
    assert normalise_label("  ", "f", 1) is None and normalise_label("", "f", 1) is None
    blank = _write(tmp_path / "blank.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": " "}\n')
    assert [e.label for e in classification.read_examples(blank, "jsonl")] == ["x", None]


def test_cluener_label_as_a_list_is_refused_with_file_and_line(tmp_path):
    good = json.dumps({"text": "北京欢迎你", "label": {"LOC": {"北京": [[0, 1]]}}}, ensure_ascii=False)
    path = _write(tmp_path / "c.json", good + "\n" + json.dumps({"text": "北京", "label": ["LOC"]}) + "\n")
    with pytest.raises(DataError, match=r"c\.json:2: bad CLUENER record: \"label\" must be an object"):
        ner.read_sentences(path, "cluener")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_limit_must_be_positive_in_every_task(name, tmp_path, vocab_dir, no_training):
    with pytest.raises(DataError, match="limit must be a positive number of examples, got -30"):
        _finetune(name, tmp_path, vocab_dir, limit=-30)
    assert not no_training
    assert take([1, 2, 3], 2) == [1, 2] and take([1, 2, 3], None) == [1, 2, 3]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_empty_eval_file_is_an_error_in_finetune_and_evaluate(name, tmp_path, vocab_dir, no_training):
    module, fmt, _ = TASKS[name]
    if name == "intent_slot":
        empty = tmp_path / "empty"
        for part in ("seq.in", "seq.out", "label"):
            _write(empty / part, "")
    elif name == "qa":
        empty = _write(tmp_path / "empty.json", '{"data": []}')
    else:
        empty = _write(tmp_path / "empty.txt", "\n\n" if name != "classification" else "label\ttext\n")
    with pytest.raises(DataError, match=r"empty.*: no examples in the evaluation file"):
        _finetune(name, tmp_path, vocab_dir, eval_file=empty)
    assert not no_training
    with pytest.raises(DataError, match=r"empty.*: no examples in the evaluation file"):
        values = {"labels": ["0", "1"], "max_seq_len": 32, "intents": ["a"], "doc_stride": 16, "scheme": "bio",
                  "crf": False, "word_level": "char", "format": fmt}
        spec = module.SPEC
        info = spec.info(**{f.name: values[f.name] for f in dataclasses.fields(spec.info) if f.name in values})
        spec.evaluate(None, Tokenizer.from_pretrained(vocab_dir), info, empty, fmt)


# ---- truncation, repairs and messages -------------------------------------------------------------------------
def test_classification_truncation_is_counted_with_the_file(tmp_path, vocab_dir, no_training):
    path = _write(tmp_path / "data" / "train.tsv", "label\ttext\n1\tgood\n0\t" + "bad " * 40 + "\n1\t"
                  + "apple " * 50 + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classification.finetune(path, _config(tmp_path), tokenizer=vocab_dir, model_size="tiny", max_seq_len=16)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"{path}: 2 of 3 examples were longer than max_seq_len=16 tokens") for m in messages)


def test_qa_question_truncation_is_counted(tmp_path, vocab_dir):
    question = qa.Question("q", "北京" * 80, "北京欢迎你。", ["北京"], 0)
    with pytest.warns(UserWarning, match=r"q\.json: 1 of 1 questions were longer than max_question_len=64"):
        qa.make_windows(Tokenizer.from_pretrained(vocab_dir), [question], 128, 64, source="q.json")


def test_ner_tag_repairs_are_counted_with_file_and_lines(tmp_path, vocab_dir, no_training):
    path = _write(tmp_path / "train.bio", "北 B-LOC\n京 I-LOC\n\n上 I-LOC\n海 I-LOC\n好 O\n京 I-PER\n\n"
                                          "你 O\n好 E-ORG\n\n")
    with pytest.warns(UserWarning, match=r"train\.bio: repaired 3 I-/E- tag\(s\) .* in 2 sentence\(s\) "
                                         r"\(lines 4, 9\)"):
        ner.finetune(path, _config(tmp_path), tokenizer=vocab_dir, model_size="tiny", max_seq_len=16)
    assert len(no_training) == 1  # a repair is reported, not refused


def test_messages_name_the_real_file(tmp_path, vocab_dir, no_training):
    train = _cls(tmp_path / "data")
    held = _write(tmp_path / "held.tsv", "label\ttext\n1\tgood\n7\tbad\n")
    with pytest.raises(DataError, match=r"held\.tsv:3: label '7' is not in the label set"):
        classification.finetune(train, _config(tmp_path), eval_file=held, tokenizer=vocab_dir, model_size="tiny")
    unlabelled = _write(tmp_path / "u.jsonl", '{"text": "good", "label": "1"}\n{"text": "bad", "label": "0"}\n'
                                              '{"text": "fig"}\n')
    with pytest.raises(DataError, match=r"u\.jsonl:3: example has no label"):
        classification.finetune(unlabelled, _config(tmp_path), fmt="jsonl", tokenizer=vocab_dir, model_size="tiny")
    long = _write(tmp_path / "rel.txt", "A(e1,e2)\t<e1> apple </e1> " + "good " * 60 + "<e2> pear </e2>\n"
                                        "Other\t<e1> fig </e1> bad <e2> plum </e2>\n")
    with pytest.raises(DataError, match=r"rel\.txt:1: \d+ tokens with the markers, more than max_seq_len=32"):
        relation.finetune(long, _config(tmp_path), tokenizer=vocab_dir, model_size="tiny", max_seq_len=32)


# ---- spelling over long texts; embed keeps rows -----------------------------------------------------------------
class _Corrector(torch.nn.Module):
    """A stand-in MLM that predicts each input token, except `wrong` -> `right`: the perfect corrector."""

    def __init__(self, vocab_size: int, wrong: int, right: int) -> None:
        super().__init__()
        self.vocab_size, self.wrong, self.right = vocab_size, wrong, right

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, mlm_positions=None):
        target = torch.where(input_ids == self.wrong, self.right, input_ids)
        if mlm_positions is not None:  # as BertForPreTraining: (M, V) at those positions, in row-major order
            target = target[mlm_positions]
        return type("Out", (), {"mlm_logits": torch.nn.functional.one_hot(target, self.vocab_size).float()})()


def test_spelling_corrects_an_error_at_position_300_of_400(vocab_dir):
    tok = Tokenizer.from_pretrained(vocab_dir)
    wrong, right = "社", "论"  # both in the vocabulary; the stand-in corrector maps one to the other
    text = list((CHARS * 20)[:400].replace(wrong, "北"))
    text[300] = wrong
    text = "".join(text)
    model = _Corrector(tok.vocab_size, tok.token_to_index[wrong], tok.token_to_index[right])
    [result] = spelling.predict(model, tok, spelling.SpellingInfo(128), [{"text": text}])
    assert result["edits"] == [{"position": 300, "from": wrong, "to": right}]
    owned = sorted(i for row in spelling.encode_windows(tok, text, None, 128) for i in row[2] if i >= 0)
    assert owned == list(range(400))  # every character is corrected by exactly one window


def test_embed_keeps_one_row_per_input_blank_or_not(vocab_dir):
    tok = Tokenizer.from_pretrained(vocab_dir)
    model = BertModel(BertConfig.preset("tiny", vocab_size=tok.vocab_size, max_position_embeddings=64))
    vectors = embed.embed(model, tok, ["good apple", "", "   ", "bad pear"], max_seq_len=16)
    assert vectors.shape[0] == 4 and np.isfinite(vectors).all()


# ---- BOM and unreadable files in every reader -------------------------------------------------------------------
READERS = {
    "classification tsv": (lambda p: classification.read_examples(p, "tsv"), "label\ttext\n1\tgood\n"),
    "classification jsonl": (lambda p: classification.read_examples(p, "jsonl"), '{"text": "a", "label": 1}\n'),
    "ner conll": (lambda p: ner.read_sentences(p, "conll"), "北 B-LOC\n京 I-LOC\n"),
    "ner msra": (lambda p: ner.read_sentences(p, "msra"), "北京/ns 好/o\n"),
    "ner cluener": (lambda p: ner.read_sentences(p, "cluener"),
                    json.dumps({"text": "北京", "label": {"LOC": {"北京": [[0, 1]]}}}, ensure_ascii=False) + "\n"),
    "ner peoples_daily": (lambda p: ner.read_sentences(p, "peoples_daily"), "北京/ns  好/a\n"),
    "ner doccano": (lambda p: ner.read_texts(p, "doccano"), '{"text": "北京", "label": [[0, 2, "LOC"]]}\n'),
    "ner label_studio": (lambda p: ner.read_texts(p, "label_studio"), json.dumps([{"data": {"text": "北京"},
                         "annotations": [{"result": [{"type": "labels", "value": {"start": 0, "end": 2,
                                                                                  "labels": ["LOC"]}}]}]}])),
    "ner cmeee": (lambda p: ner.read_texts(p, "cmeee"),
                  json.dumps([{"text": "北京", "entities": [{"start_idx": 0, "end_idx": 1, "type": "LOC"}]}])),
    "relation wsc": (lambda p: relation.read_examples(p, "wsc"), json.dumps(
        {"text": "他说他会来", "target": {"span1_text": "他", "span1_index": 0, "span2_text": "他", "span2_index": 2},
         "label": "true"}, ensure_ascii=False) + "\n"),
    "relation semeval": (lambda p: relation.read_examples(p, "semeval"), "A\t<e1> a </e1> x <e2> b </e2>\n"),
    "relation chinese_nre": (lambda p: relation.read_examples(p, "chinese_nre"), "北京\t上海\tnear\t北京到上海\n"),
    "spelling tsv": (lambda p: spelling.read_pairs(p, "tsv"), "北京\t北京\n"),
    "qa squad": (lambda p: [q.question for q in qa.read_questions(p)], json.dumps(SQUAD, ensure_ascii=False)),
    "pretraining corpus": (lambda p: list(read_documents(p)), "北京欢迎你。\n\n今天天气很好。\n"),
    "tokenizer training": (lambda p: Tokenizer.train([p], vocab_size=40, min_frequency=1).vocab, CHARS + "\n"),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_bom_is_dropped_by_every_reader(name, tmp_path):
    read, content = READERS[name]
    plain = read(_write(tmp_path / "plain.txt", content))
    with_bom = read(_write(tmp_path / "bom.txt", "\ufeff" + content))
    assert with_bom == plain or [vars(x) for x in with_bom] == [vars(x) for x in plain]


@pytest.mark.parametrize("name", sorted(READERS))
def test_unreadable_paths_are_named_in_every_reader(name, tmp_path, monkeypatch):
    read, content = READERS[name]
    (tmp_path / "a_dir").mkdir()
    with pytest.raises(DataError, match=r"a_dir: is a directory; expected a file"):
        read(tmp_path / "a_dir")
    os.symlink(tmp_path / "gone.txt", tmp_path / "link.txt")
    with pytest.raises(DataError, match=r"link\.txt: broken symbolic link"):
        read(tmp_path / "link.txt")
    plain = _write(tmp_path / "plain.txt", content)
    with pytest.raises(DataError, match=r"plain\.txt/x: not found: a parent of this path is a file"):
        read(plain / "x")
    # tests run as root, who may read a mode-000 file: stand in for the kernel's EACCES by making open() fail
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fileio, "open", denied, raising=False)
    with pytest.raises(DataError, match=r"plain\.txt: permission denied"):
        read(plain)


def test_a_line_read_in_pieces_is_cut_between_characters_and_errors_name_line_and_byte(tmp_path):
    """A reader of a corpus without newlines takes a line a few bytes at a time: the pieces join to the line
    `read_lines` gives (BOM, \\r\\n and a last line without newline included), none is cut inside a character, and
    a byte that is not UTF-8 is named by its line and its offset in the line, as when the line is read whole."""
    path = tmp_path / "lines.txt"
    path.write_bytes("\ufeff北京欢迎你北京欢迎你\nab\r\n\n".encode() + "北京".encode() * 3 + "a北京".encode())
    for size in (4, 5, 7, 64):
        pieces = list(fileio.read_line_pieces(path, size))
        assert all(len(text.encode()) <= size for _, text, _ in pieces)
        lines: dict[int, str] = {}
        for number, text, _ in pieces:
            lines[number] = lines.get(number, "") + text
        assert list(lines.items()) == list(fileio.read_lines(path)) == [
            (1, "北京欢迎你北京欢迎你"), (2, "ab"), (3, ""), (4, "北京北京北京a北京")]
        assert [ended for _, _, ended in pieces].count(True) == 4 and pieces[-1][2]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n" + "北京".encode() * 4 + b"\xff!\n")
    truncated = tmp_path / "truncated.txt"
    truncated.write_bytes(b"ok\n" + "北京".encode() * 3 + "京".encode()[:2])
    for size in (4, 7, None):
        with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8 text \(invalid start byte at byte 24\)"):
            list(fileio.read_line_pieces(bad, size))
        with pytest.raises(DataError, match=r"truncated\.txt:2: not UTF-8 text \(unexpected end of data at byte 18\)"):
            list(fileio.read_line_pieces(truncated, size))


def test_intent_slot_file_in_place_of_a_directory_is_named(tmp_path):
    path = _write(tmp_path / "seq.in", "hello\n")
    with pytest.raises(DataError, match=r"seq\.in: expected a directory"):
        intent_slot.read_utterances(path)
    directory = _atis(tmp_path)
    (directory / "label").unlink()
    (directory / "label").mkdir()
    with pytest.raises(DataError, match=r"label: is a directory"):
        intent_slot.read_utterances(directory)


def test_tagging_word_cut_and_intent_overflow_are_named(tmp_path, vocab_dir, no_training):
    path = _write(tmp_path / "train.bio", "北京欢迎你今天 B-X\n好 O\n\n北 B-LOC\n")  # one word, 7 pieces
    with pytest.warns(UserWarning, match=r"train\.bio: 1 of 3 words were longer than max_seq_len - 2=4 tokens"):
        ner.finetune(path, _config(tmp_path), tokenizer=vocab_dir, model_size="tiny", max_seq_len=6)
    directory = _atis(tmp_path)
    _write(directory / "seq.in", "good apple\n" + "bad " * 40 + "pear\n")
    _write(directory / "seq.out", "O B-fruit\n" + "O " * 40 + "B-fruit\n")
    with pytest.raises(DataError, match=r"atis:2: the utterance needs more than max_seq_len=16 tokens"):
        intent_slot.finetune(directory, _config(tmp_path), tokenizer=vocab_dir, model_size="tiny", max_seq_len=16)
