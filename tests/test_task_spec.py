"""Tasks as data: every spec is complete and consistent, no task name is spelled outside its file and the registry,
fill-mask equals transformers' pipeline, each head with a transformers class loads there with the same logits, and a
served pair classifier answers 64 concurrent mixed requests as it answers them one by one."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from bench._serving import Server, make_pair_checkpoint

from bertkit import BertConfig, BertForMaskedLM, BertForPreTraining, BertModel, Tokenizer
from bertkit.cli import main
from bertkit.predict import Predictor
from bertkit.tasks import TASKS, task_spec, trainable_tasks
from bertkit.tasks.fill_mask import pipeline_output
from tests.conftest import randomize_

SRC = Path(__file__).resolve().parents[1] / "src" / "bertkit"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


@pytest.mark.parametrize("name", list(TASKS))
def test_every_spec_is_complete(name):
    spec = task_spec(name)
    assert spec.name == name
    assert spec.inputs and spec.inputs[0].required and spec.view and set(spec.example) <= {f.name for f in spec.inputs}
    assert dataclasses.is_dataclass(spec.info)
    for f in dataclasses.fields(spec.info):  # every value read back from task.json is checked
        assert "check" in f.metadata and f.metadata["expected"], f.name
    if spec.trainable:
        assert spec.default_format in spec.formats and spec.evaluate is not None
        assert spec.model.hf_architecture
    for f in dataclasses.fields(spec.options) if spec.options else ():
        assert f.metadata["help"], f.name  # each option is a documented --flag
    json.dumps(spec.schema())  # /health carries it


def _string_constants(path: Path) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_task_name_is_spelled_outside_its_own_file_and_the_registry():
    names = set(TASKS)
    found = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "tasks":
            continue  # each task's own file, the registry and the shared task helpers
        for line, value in _string_constants(path):
            # a name as the whole string, or as a word of a message ("for intent_slot", "qa: ...")
            if value in names or any(re.search(rf"(?<![\w-]){n}(?![\w-])", value) for n in names):
                found.append(f"{path.relative_to(SRC)}:{line}: {value!r:.80}")
    page = (SRC / "web" / "index.html").read_text(encoding="utf-8")
    found += [f"web/index.html: {n!r}" for n in names if re.search(rf"[\"'`]{n}[\"'`]", page)]
    assert not found, "\n".join(found)


def test_the_finetune_flags_come_from_the_specs(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in trainable_tasks():
        spec = task_spec(name)
        for f in dataclasses.fields(spec.options) if spec.options else ():
            assert f"--{f.name.replace('_', '-')}" in help_text
    assert "ner, intent_slot: a CRF layer" in help_text  # one flag, the tasks that take it named in its help
    # --head: one flag, each task's own heads and help; a head of another task is refused, naming this task's
    assert "--head {tagger,global_pointer,pipeline,gplinker}" in help_text
    assert "(default: ner tagger, triples pipeline)" in help_text and "; triples: pipeline: an entity" in help_text
    assert main(["finetune", "--task", "triples", "--head", "global_pointer", "--train", "x.json"]) != 0
    assert "--head global_pointer: choose one of pipeline, gplinker here" in capsys.readouterr().err


# ---- fill-mask -----------------------------------------------------------------------------------------------

def _pipeline(directory: Path):
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers.pipeline("fill-mask", model=str(directory), tokenizer=str(directory), device="cpu")


def _same_as_pipeline(ours: list, theirs: list) -> None:
    if theirs and isinstance(theirs[0], dict):
        ours, theirs = [ours], [theirs]
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert [c["token"] for c in mine] == [c["token"] for c in reference]
        assert [c["token_str"] for c in mine] == [c["token_str"] for c in reference]
        assert [c["sequence"] for c in mine] == [c["sequence"] for c in reference]
        for a, b in zip(mine, reference, strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-4


@pytest.fixture(scope="module")
def english_mlm(tmp_path_factory, minilm_dir):
    """A random BertForMaskedLM with the real MiniLM vocabulary (30,522 WordPiece entries)."""
    directory = tmp_path_factory.mktemp("mlm")
    tok = Tokenizer.from_pretrained(minilm_dir)
    config = BertConfig(**TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    model = randomize_(BertForMaskedLM(config), seed=3)
    with torch.no_grad():  # a peaked output distribution, so the top 5 are well separated
        model.mlm_bias.copy_(torch.randn(len(tok), generator=torch.Generator().manual_seed(1)) * 4)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


ENGLISH = ["The capital of France is [MASK].", "I [MASK] to the [MASK] yesterday.", "[MASK]"]


def test_fill_mask_equals_the_transformers_pipeline_on_a_masked_lm(english_mlm):
    pipe = _pipeline(english_mlm)
    predictor = Predictor(english_mlm, device="cpu")
    assert predictor.task == "fill_mask"
    results = predictor.predict(ENGLISH)  # batched together: padding must not change any score
    for text, result in zip(ENGLISH, results, strict=True):
        _same_as_pipeline(pipeline_output(result), pipe(text, top_k=5))


def test_fill_mask_on_a_chinese_pre_training_checkpoint(tmp_path):
    """bertkit's own pre-training output (BertForPreTraining, MLM + NSP heads), Chinese vocabulary; and the demo's
    model where this machine has one."""
    corpus = ["北京举行新年音乐会", "人民日报发表社论", "今天天气很好", "我们去上海了"] * 3
    tok = Tokenizer.train(corpus, vocab_size=80, min_frequency=1)
    model = randomize_(BertForPreTraining(BertConfig(**TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id)))
    model.save_pretrained(tmp_path / "zh")
    tok.save_pretrained(tmp_path / "zh")
    checkpoints = [tmp_path / "zh"]
    demo = SRC.parents[1] / "runs" / "demo" / "pretrain" / "model"
    if (demo / "config.json").is_file():
        checkpoints.append(demo)
    texts = ["今天[MASK]气很好", "北京[MASK]行新年[MASK]乐会"]
    for directory in checkpoints:
        pipe = _pipeline(directory)
        results = Predictor(directory, device="cpu").predict(texts)
        for text, result in zip(texts, results, strict=True):
            _same_as_pipeline(pipeline_output(result), pipe(text, top_k=5))


def test_fill_mask_command_and_its_errors(english_mlm, capsys, tmp_path):
    assert main(["fill-mask", str(english_mlm), ENGLISH[0], ENGLISH[1], "--top-k", "3", "--precision", "fp32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and len(lines[0]) == 3 and len(lines[1]) == 2 and len(lines[1][0]) == 3
    _same_as_pipeline(lines[0], pipeline_output(Predictor(english_mlm).predict([ENGLISH[0]])[0])[:3])
    assert main(["fill-mask", str(english_mlm), ENGLISH[0], "no mask here"]) == 2
    assert "error: text 2: no [MASK] in the text" in capsys.readouterr().err
    assert main(["fill-mask", str(english_mlm), "[MASK] " + "word " * 600]) == 2
    assert "more than max_seq_len=512 (cutting the text could cut a mask)" in capsys.readouterr().err
    BertModel(BertConfig(**TINY, vocab_size=100)).save_pretrained(tmp_path / "encoder")
    Tokenizer.from_pretrained(english_mlm).save_pretrained(tmp_path / "encoder")
    assert main(["fill-mask", str(tmp_path / "encoder"), "a [MASK]"]) == 2
    assert "fill-mask needs an MLM head" in capsys.readouterr().err


def test_a_fine_tuned_checkpoint_that_lost_its_task_json_is_refused_not_served_as_another_task(tmp_path):
    from bertkit.errors import CheckpointError
    from bertkit.tasks.base import save_task
    from bertkit.tasks.ner import SPEC, BertForTokenClassification, NerInfo
    from tests.reliability.tiny_checkpoints import TEXTS, make_classifier

    # a tagger bertkit wrote (its config.json has bertkit_crf): what it needs beyond config.json was in task.json
    tok = Tokenizer.train(TEXTS, vocab_size=80, min_frequency=1)
    info = NerInfo(["O", "B-PER", "I-PER"], 32, "bio", False, "char")
    config = BertConfig(**TINY, vocab_size=len(tok), extra=SPEC.config_extra(info))
    save_task(SPEC, info, BertForTokenClassification(config), tok, tmp_path / "ner")
    (tmp_path / "ner" / "task.json").unlink()
    with pytest.raises(CheckpointError, match=r"task\.json: not found, but .* holds a fine-tuned model "
                                              r"\(BertForTokenClassification; config\.json has bertkit_crf, "
                                              r"id2label\)"):
        Predictor(tmp_path / "ner")
    # a classifier's config.json holds all its task needs, as transformers writes it: it is read as one
    directory = make_classifier(tmp_path / "c")
    (directory / "task.json").unlink()
    predictor = Predictor(directory)
    assert predictor.task == "classification" and predictor.labels == ["neg", "pos"] and predictor.derived


def test_a_pre_trained_encoder_serves_sentence_embeddings(english_mlm, minilm_dir):
    from bertkit.tasks.embed import embed, load

    predictor = Predictor(minilm_dir, device="cpu", task="sentence_embedding")
    [result] = predictor.predict(["A sentence to embed."])
    model, tok = load(minilm_dir)
    expected = embed(model, tok, ["A sentence to embed."])[0]
    assert len(result["vector"]) == 384
    assert max(abs(a - b) for a, b in zip(result["vector"], expected.tolist(), strict=True)) < 1e-5
    with pytest.raises(Exception, match="a pre-trained checkpoint serves fill_mask or sentence_embedding, not ner"):
        Predictor(english_mlm, task="ner")


# ---- interoperability: each head with a transformers class -------------------------------------------------

def _heads():
    from bertkit.tasks.classification import BertForSequenceClassification
    from bertkit.tasks.ner import BertForTokenClassification
    from bertkit.tasks.qa import BertForQuestionAnswering

    labels = {"id2label": {"0": "neg", "1": "pos", "2": "mixed"}, "label2id": {"neg": 0, "pos": 1, "mixed": 2}}
    return [
        ("AutoModelForSequenceClassification", BertForSequenceClassification, labels, lambda out: out),
        ("AutoModelForTokenClassification", BertForTokenClassification, labels, None),
        ("AutoModelForQuestionAnswering", BertForQuestionAnswering, {}, lambda out: torch.stack(out, -1)),
        ("AutoModelForMaskedLM", BertForMaskedLM, {}, lambda out: out),
        ("AutoModelForPreTraining", BertForPreTraining, {}, lambda out: out.mlm_logits),
    ]


@pytest.mark.parametrize(("auto", "cls", "extra", "take"), _heads(), ids=[h[0] for h in _heads()])
def test_each_head_loads_in_transformers_with_the_same_logits(tmp_path, auto, cls, extra, take):
    import transformers

    from tests.conftest import batch_with_padding_and_pairs

    config = BertConfig(**TINY, vocab_size=99, extra=dict(extra))
    model = randomize_(cls(config), seed=5).eval()
    model.save_pretrained(tmp_path)
    theirs = getattr(transformers, auto).from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == cls.hf_architecture
    ids, mask, types = batch_with_padding_and_pairs(99)
    with torch.no_grad():
        reference = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
        if take is None:  # the tagger reads first word pieces: every token is a word here
            words = torch.arange(ids.shape[1]).expand_as(ids)
            ours = model(ids, mask, types, words)
        else:
            ours = take(model(ids, mask, types))
    if auto == "AutoModelForPreTraining":
        expected = reference.prediction_logits
    elif auto == "AutoModelForQuestionAnswering":
        expected = torch.stack([reference.start_logits, reference.end_logits], -1)
    else:
        expected = reference.logits
    keep = mask.bool()
    if ours.dim() == 3 and ours.shape[:2] == ids.shape:  # per token: padding positions are not compared
        ours, expected = ours[keep], expected[keep]
    if auto == "AutoModelForQuestionAnswering":
        # ours masks positions outside the context (segment 1) and padding to the minimum; compare the rest
        allowed = (types == 1) & keep
        allowed[:, 0] = True
        ours, expected = ours[allowed[keep]], expected[allowed[keep]]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


# ---- the server: one encoding path for inputs with and without a pair -------------------------------------

@pytest.fixture(scope="module")
def pair_server(tmp_path_factory):
    checkpoint = make_pair_checkpoint(tmp_path_factory.mktemp("pair"))
    server = Server(checkpoint, "--max-wait-ms", "50", "--max-queue", "1024", "--precision", "fp32")
    yield server, checkpoint
    server.stop()


def test_64_concurrent_mixed_requests_all_answered_as_one_by_one(pair_server):
    server, checkpoint = pair_server
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "run", "fast", "and", "it", "is", "raining",
             "in", "the", "street"]
    requests = []
    for i in range(64):
        text = " ".join(words[: 2 + i % 13])
        requests.append({"text": text} if i % 2 else {"text": text, "text_pair": " ".join(words[i % 7 : 12])})
    answers: dict[int, tuple[int, dict]] = {}

    def client(i: int) -> None:
        status, body, _ = server.post("/predict", {"inputs": [requests[i]]})
        answers[i] = (status, body)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [answers[i][0] for i in range(64)] == [200] * 64, [answers[i][1] for i in range(64) if answers[i][0] != 200]
    metrics = server.get("/metrics")[1]
    assert metrics["batch_size"]["max"] > 1  # requests really were batched together
    predictor = Predictor(checkpoint, precision="fp32")
    alone = [predictor.predict([r])[0] for r in requests]
    assert [answers[i][1]["predictions"][0]["label"] for i in range(64)] == [a["label"] for a in alone]
    for i in range(64):
        for label, p in alone[i]["probabilities"].items():
            assert abs(answers[i][1]["predictions"][0]["probabilities"][label] - p) < 1e-5


def test_health_carries_the_input_schema(pair_server):
    server, _ = pair_server
    health = server.get("/health")[1]
    assert health["spec"]["inputs"][1] == {"name": "text_pair", "help": "a second text, for sentence-pair tasks",
                                           "required": False, "multiline": False, "kind": "text"}
    assert health["spec"]["view"] == {"label": "label", "labels": "labels", "probabilities": "probabilities",
                                      "score": "score"}
    assert health["info"]["labels"] == health["labels"] == ["0", "1"]
