"""Checkpoints as transformers saves them: a tokenizer.json without vocab.txt, sharded safetensors, and the four
`BertFor*` heads without task.json (a sequence classifier of each problem_type), predicted (as transformers computes
them, within 1e-5), evaluated, served and described; clear errors for what bertkit does not read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bertkit import Tokenizer
from bertkit.cli import main
from bertkit.errors import CheckpointError
from bertkit.predict import Predictor

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
WORDS = ["the", "a", "cat", "cats", "dog", "sat", "on", "mat", "in", "park", "is", "where", "who", "what", "lives",
         "paris", "london", "tower", "big", "small", "and", "it", "was", "good", "bad", "not", "very", "film", "hello",
         "world"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed", ".", ",", "?", "北", "京", "上", "海"]
TEXTS = ["the cat sat on the mat.", "Where is the big dog?", "hello world , it was very good", "北京 and London"]
HEADS = {
    "BertForSequenceClassification": {"id2label": {0: "neg", 1: "pos", 2: "mixed"}},
    "BertForTokenClassification": {"id2label": {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER", 4: "I-PER"}},
    "BertForQuestionAnswering": {},
    "BertForMultipleChoice": {},
}


def _transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def hf_tokenizer(root: Path):
    """transformers' BertTokenizerFast over VOCAB, built from a vocab file."""
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab" / "vocab.txt").write_text("".join(f"{t}\n" for t in VOCAB), encoding="utf-8")
    return _transformers().BertTokenizerFast.from_pretrained(root / "vocab")


def save_as_transformers(directory: Path, head: str, seed: int = 0, config_kwargs: dict | None = None,
                         **save_kwargs):
    """A tiny random transformers model of class `head` (its config: HEADS[head], or `config_kwargs`) and its
    tokenizer, saved as transformers saves them (the vocabulary in tokenizer.json only); returns (model, tokenizer)."""
    transformers = _transformers()
    tokenizer = hf_tokenizer(directory.parent / f"{directory.name}-src")
    config = transformers.BertConfig(**TINY, vocab_size=len(VOCAB),
                                     **(HEADS[head] if config_kwargs is None else config_kwargs))
    torch.manual_seed(seed)
    model = getattr(transformers, head)(config).eval()
    with torch.no_grad():  # transformers initialises biases and LayerNorms to constants; make every weight count
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(directory, **save_kwargs)
    tokenizer.save_pretrained(directory)
    (directory / "vocab.txt").unlink(missing_ok=True)
    return model, tokenizer


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, tuple[Path, object, object]]:
    root = tmp_path_factory.mktemp("heads")
    return {head: (root / head, *save_as_transformers(root / head, head)) for head in HEADS}


def test_a_tokenizer_json_without_vocab_txt_gives_transformers_ids(tmp_path):
    tokenizer = hf_tokenizer(tmp_path)
    tokenizer.add_tokens(["北京上海"])  # an added token: matched before WordPiece, as transformers matches it
    tokenizer.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "vocab.txt").unlink(missing_ok=True)
    assert not (tmp_path / "saved" / "vocab.txt").exists() and (tmp_path / "saved" / "tokenizer.json").is_file()
    ours = Tokenizer.from_pretrained(tmp_path / "saved")
    assert len(ours) == len(tokenizer) == len(VOCAB) + 1
    for text in [*TEXTS, "Cats in 北京上海 sat.", "unknownword the"]:
        assert ours.encode(text) == tokenizer(text)["input_ids"], text
    assert ours.encode("the cat", "a dog") == tokenizer("the cat", "a dog")["input_ids"]
    assert ours.tokenize("北京上海") == ["北京上海"]
    # saved in bertkit's layout (vocab.txt + tokenizer_config.json), it reads back the same in both libraries
    ours.save_pretrained(tmp_path / "resaved")
    again = _transformers().AutoTokenizer.from_pretrained(tmp_path / "resaved")
    reread = Tokenizer.from_pretrained(tmp_path / "resaved")
    for text in [*TEXTS, "Cats in 北京上海 sat."]:
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"] == reread.encode(text)


def test_minilm_with_only_its_tokenizer_json_loads_as_with_its_vocab_txt(minilm_dir, tmp_path, capsys):
    from bertkit import BertModel

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).symlink_to(minilm_dir / name)
    texts = ["Café au lait, s'il vous plaît!", "北京欢迎你 — naïve résumé", "unbelievably tokenized"]
    with_vocab, without = Tokenizer.from_pretrained(minilm_dir), Tokenizer.from_pretrained(tmp_path)
    assert without.vocab == with_vocab.vocab and without.options == with_vocab.options
    assert [without.encode(t) for t in texts] == [with_vocab.encode(t) for t in texts]
    batch = without(texts)
    with torch.no_grad():
        ours = BertModel.from_pretrained(tmp_path)(batch["input_ids"], batch["attention_mask"])
        reference = BertModel.from_pretrained(minilm_dir)(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(ours.last_hidden_state, reference.last_hidden_state)
    assert main(["info", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary   30522 tokens (tokenizer.json)" in printed
    assert "task         none: pre-trained (predict and serve run sentence_embedding)" in printed


def test_a_tokenizer_json_that_is_not_wordpiece_is_refused_by_name(tmp_path):
    hf_tokenizer(tmp_path).save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "vocab.txt").unlink(missing_ok=True)
    path = tmp_path / "saved" / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["model"]["type"] = "BPE"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: model type is 'BPE'; bertkit reads BERT's WordPiece"):
        Tokenizer.from_pretrained(tmp_path / "saved")
    data["model"]["type"], data["pre_tokenizer"] = "WordPiece", {"type": "Whitespace"}
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"pre_tokenizer is .*Whitespace.*; bertkit reads BERT's"):
        Tokenizer.from_pretrained(tmp_path / "saved")


def _close(ours, theirs) -> None:
    torch.testing.assert_close(torch.as_tensor(ours, dtype=torch.float32), torch.as_tensor(theirs).float(),
                               atol=1e-5, rtol=1e-5)


def test_a_sequence_classifier_predicts_as_transformers(heads):
    directory, model, tokenizer = heads["BertForSequenceClassification"]
    predictor = Predictor(directory, device="cpu")
    assert predictor.task == "classification" and predictor.labels == ["neg", "pos", "mixed"]
    inputs = [{"text": t} for t in TEXTS] + [{"text": "the cat", "text_pair": "a dog sat"}]
    results = predictor.predict(inputs)
    for item, result in zip(inputs, results, strict=True):
        batch = tokenizer(item["text"], item.get("text_pair"), return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(model(**batch).logits[0], -1)
        _close([result["probabilities"][label] for label in predictor.labels], expected)
        assert result["label"] == predictor.labels[int(expected.argmax())]


@pytest.mark.parametrize("problem, num_labels", [("multi_label_classification", 3), ("regression", 1),
                                                 (None, 1)])
def test_a_multi_label_or_regression_classifier_predicts_as_transformers(tmp_path, capsys, problem, num_labels):
    # transformers writes problem_type when it trains; without one, its model trains one output as regression
    labels = {0: "joy", 1: "anger", 2: "fear"} if num_labels == 3 else {0: "LABEL_0"}
    config = {"id2label": labels, **({"problem_type": problem} if problem else {})}
    model, tokenizer = save_as_transformers(tmp_path / "cls", "BertForSequenceClassification", seed=2,
                                            config_kwargs=config)
    predictor = Predictor(tmp_path / "cls", device="cpu", precision="fp32")
    assert predictor.task == "classification" and predictor.info.problem_type == (problem or "regression")
    inputs = [{"text": t} for t in TEXTS] + [{"text": "the cat", "text_pair": "a dog sat"}]
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(i["text"], i.get("text_pair"), return_tensors="pt")).logits
                            for i in inputs])  # (N, C)
    results = predictor.predict(inputs)
    if num_labels == 3:
        expected = torch.sigmoid(logits)
        assert 0 < int((expected >= 0.5).sum()) < expected.numel()  # the threshold decides, in both directions
        for result, row in zip(results, expected, strict=True):
            assert set(result) == {"labels", "probabilities"}
            _close(list(result["probabilities"].values()), row)
            assert result["labels"] == [name for name, p in zip(labels.values(), row, strict=True) if p >= 0.5]
    else:
        assert [list(r) for r in results] == [["score"]] * len(inputs)
        _close([r["score"] for r in results], logits[:, 0])
    assert main(["info", str(tmp_path / "cls")]) == 0
    said = {"multi_label_classification": "labels from id2label (3); problem_type multi_label_classification: a "
                                          "label where its probability is at least 0.5; max_seq_len 512",
            "regression": "one output; problem_type regression: a score; max_seq_len 512",
            None: "one output; problem_type absent, one output: regression (as transformers trains it)"}[problem]
    assert f"classification, derived from config.json: BertForSequenceClassification; {said}" in (
        capsys.readouterr().out)


def test_a_transformers_regression_model_is_evaluated_from_the_command_line(tmp_path, capsys):
    from bertkit.metrics import pearson

    model, tokenizer = save_as_transformers(tmp_path / "reg", "BertForSequenceClassification", seed=4,
                                            config_kwargs={"num_labels": 1, "problem_type": "regression"})
    gold = [0.5, 4.0, 2.5, 1.0]
    with torch.no_grad():
        scores = [float(model(**tokenizer(t, return_tensors="pt")).logits[0, 0]) for t in TEXTS]
    data = tmp_path / "test.tsv"
    data.write_text("label\ttext\n" + "".join(f"{g}\t{t}\n" for g, t in zip(gold, TEXTS, strict=True)))
    assert main(["evaluate", str(tmp_path / "reg"), "--data", str(data), "--device", "cpu", "--precision",
                 "fp32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["pearson"] == pytest.approx(pearson(gold, scores), abs=1e-5)


def test_a_token_classifier_predicts_as_transformers(heads):
    directory, model, tokenizer = heads["BertForTokenClassification"]
    predictor = Predictor(directory, device="cpu")
    assert predictor.task == "ner" and predictor.info.word_level == "space" and predictor.info.scheme == "bio"
    assert predictor.model.bert.pooler is None  # transformers' tagger has none, so no random one is made up
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    for text in TEXTS[:3]:
        [result] = predictor.predict([text])
        batch = tokenizer(text.split(), is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits[0]  # (T, C)
        word_ids = batch.word_ids(0)
        first = [word_ids.index(w) for w in range(len(text.split()))]  # each word's first piece, as bertkit tags
        assert result["tags"] == [labels[int(logits[p].argmax())] for p in first]
        ours = predictor.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                               torch.tensor([first]))
        _close(ours[0], logits[first])
    int8 = Predictor(directory, device="cpu", precision="int8")  # the quantized path runs without a pooler too
    assert [len(r["tags"]) for r in int8.predict(TEXTS[:3])] == [len(t.split()) for t in TEXTS[:3]]


def test_a_question_answering_model_answers_as_transformers(heads):
    directory, model, tokenizer = heads["BertForQuestionAnswering"]
    predictor = Predictor(directory, device="cpu")
    assert predictor.task == "qa" and (predictor.info.max_seq_len, predictor.info.doc_stride) == (384, 128)
    context = "the big cat sat on the mat in paris, and the small dog sat in london."
    for question in ["where is the cat?", "who sat in london?", "what was good"]:
        [result] = predictor.predict([{"question": question, "context": context}])
        batch = tokenizer(question, context, return_tensors="pt", return_offsets_mapping=True)
        offsets = batch.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            out = model(**batch)
        start, end = out.start_logits[0], out.end_logits[0]
        in_context = [i for i, s in enumerate(batch.sequence_ids(0)) if s == 1]
        # the best span of the context (start <= end, at most 30 tokens), by start + end logit
        s, e = max(((s, e) for s in in_context for e in in_context if 0 <= e - s < 30),
                   key=lambda span: float(start[span[0]] + end[span[1]]))
        assert (result["start"], result["end"]) == (offsets[s][0], offsets[e][1])
        assert result["answer"] == context[offsets[s][0]:offsets[e][1]]
        ours = predictor.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        _close(torch.stack(ours, -1)[0, in_context], torch.stack([start, end], -1)[in_context])


def test_a_multiple_choice_model_chooses_as_transformers(heads):
    directory, model, tokenizer = heads["BertForMultipleChoice"]
    predictor = Predictor(directory, device="cpu")
    assert predictor.task == "multiple_choice"
    question = {"context": "the cat sat on the mat.", "question": "where is the cat?",
                "choices": ["on the mat", "in the park", "in paris"]}
    [result] = predictor.predict([question])
    # bertkit's encoding of a choice with a context: [CLS] context [SEP] question choice [SEP]
    batch = tokenizer([question["context"]] * 3, [f"{question['question']} {c}" for c in question["choices"]],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = torch.softmax(model(**{k: v[None] for k, v in batch.items()}).logits[0], -1)  # (1, C, T) in
    _close(result["scores"], expected)
    assert result["index"] == int(expected.argmax()) and result["answer"] == question["choices"][result["index"]]


def test_sharded_safetensors_load_and_predict_as_transformers(tmp_path):
    model, tokenizer = save_as_transformers(tmp_path / "sharded", "BertForSequenceClassification", seed=3,
                                            max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    [result] = Predictor(tmp_path / "sharded", device="cpu").predict([TEXTS[0]])
    with torch.no_grad():
        expected = torch.softmax(model(**tokenizer(TEXTS[0], return_tensors="pt")).logits[0], -1)
    _close(list(result["probabilities"].values()), expected)
    (tmp_path / "sharded" / shards[0]).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: cannot read weights"):
        Predictor(tmp_path / "sharded", device="cpu")


def test_info_says_the_task_was_derived_and_from_what(heads, capsys):
    assert main(["info", str(heads["BertForTokenClassification"][0])]) == 0
    printed = capsys.readouterr().out
    assert f"vocabulary   {len(VOCAB)} tokens (tokenizer.json)" in printed
    assert ("task         ner, derived from config.json: BertForTokenClassification; tags from id2label (5); "
            "scheme bio; no CRF; a tag per space-separated word") in printed
    assert main(["info", str(heads["BertForSequenceClassification"][0])]) == 0
    assert ("classification, derived from config.json: BertForSequenceClassification; labels from id2label (3); "
            "problem_type absent: single-label; max_seq_len 512") in capsys.readouterr().out


def test_a_transformers_classifier_is_evaluated_and_predicted_from_the_command_line(tmp_path, capsys):
    model, tokenizer = save_as_transformers(tmp_path / "cls", "BertForSequenceClassification", seed=1)
    # transformers' placeholder names LABEL_0, LABEL_1, LABEL_2 are the labels 0, 1, 2 of a numbered label column
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(3)}
    (tmp_path / "cls" / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        predicted = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in TEXTS]
    gold = [0, 1, 2, 0]
    data = tmp_path / "test.tsv"
    data.write_text("label\ttext\n" + "".join(f"{g}\t{t}\n" for g, t in zip(gold, TEXTS, strict=True)))
    assert main(["evaluate", str(tmp_path / "cls"), "--data", str(data), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["task"] == "classification"
    assert metrics["accuracy"] == pytest.approx(sum(p == g for p, g in zip(predicted, gold, strict=True)) / 4)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["predict", str(tmp_path / "cls"), "--input", str(tmp_path / "in.txt"), "--device", "cpu",
                 "--precision", "fp32"]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels == [str(p) for p in predicted]
    # bertkit wrote nothing into the directory transformers saved
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tokenizer.json", "tokenizer_config.json"]


def test_a_transformers_classifier_is_served(heads):
    from bench._serving import Server

    directory = heads["BertForSequenceClassification"][0]
    expected = Predictor(directory, device="cpu", precision="fp32").predict([TEXTS[1]])
    server = Server(directory, "--precision", "fp32", "--device", "cpu")
    try:
        status, health, _ = server.get("/health")
        assert status == 200 and health["task"] == "classification" and health["labels"] == ["neg", "pos", "mixed"]
        status, body, _ = server.post("/predict", {"inputs": [TEXTS[1]]})
        assert status == 200 and body["predictions"][0]["label"] == expected[0]["label"]
        _close(list(body["predictions"][0]["probabilities"].values()), list(expected[0]["probabilities"].values()))
    finally:
        server.stop()


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


REFUSED = [  # (the head saved, config.json's changes, what the error says)
    ("BertForSequenceClassification", dict(model_type="roberta"),
     r"model_type is 'roberta'; bertkit loads only 'bert' checkpoints"),
    ("BertForSequenceClassification", dict(architectures=["BertForNextSentencePrediction"]),
     r"config\.json: architectures \['BertForNextSentencePrediction'\] is a head bertkit does not read; without "
     r"task\.json it reads BertForSequenceClassification, BertForTokenClassification"),
    ("BertForSequenceClassification", dict(problem_type="ordinal"),
     r"problem_type 'ordinal' is not one transformers writes \(single_label_classification, "
     r"multi_label_classification, regression\)"),
    ("BertForSequenceClassification", dict(problem_type="regression"),
     r"problem_type regression with 3 outputs in id2label; bertkit's regression has one"),
    ("BertForTokenClassification", dict(id2label={str(i): f"LABEL_{i}" for i in range(5)}),
     r"id2label has \['LABEL_0', 'LABEL_1', 'LABEL_2', 'LABEL_3', 'LABEL_4'\], which are not entity tags"),
    ("BertForSequenceClassification", dict(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                                           problem_type="single_label_classification"),
     r"problem_type single_label_classification with one label in id2label; a single-label classifier needs two "
     r"or more"),
    ("BertForTokenClassification", dict(architectures=["BertForSequenceClassification"]),  # no pooler weights
     r"does not fit BertForSequenceClassification:\nmissing weights:\n  bert\.pooler\.weight"),
]


@pytest.mark.parametrize(("head", "changes", "message"), REFUSED)
def test_what_bertkit_does_not_read_is_refused_by_name(heads, tmp_path, head, changes, message):
    directory = tmp_path / head
    shutil.copytree(heads[head][0], directory)
    _edit_config(directory, **changes)
    with pytest.raises(CheckpointError, match=message):
        Predictor(directory, device="cpu")


def test_a_chinese_vocabulary_tags_per_character(tmp_path):
    from bertkit import BertConfig
    from bertkit.tasks.derived import derive_task

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"张三去北京了上海", "the", "##s"]
    Tokenizer(vocab).save_pretrained(tmp_path)
    config = BertConfig(**TINY, vocab_size=len(vocab), architectures=["BertForTokenClassification"],
                        extra={"id2label": {"0": "O", "1": "B-PER", "2": "I-PER", "3": "S-LOC", "4": "E-LOC"}})
    derived = derive_task(tmp_path, config)
    assert derived is not None and derived.info.word_level == "char" and derived.info.scheme == "bioes"
    assert "a tag per character (vocab.txt: 8 CJK characters, 1 Latin words)" in derived.describe()
