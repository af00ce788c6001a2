"""Distillation: the losses by hand, the layer mapping and the taps it reads, augmentation's statistics, a toy teacher
taught to a smaller student (the student an ordinary checkpoint, also for transformers), exact resume, every covered
task end to end."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bertkit import BertConfig, Tokenizer
from bertkit.cli import main
from bertkit.distill.augment import PieceSampler, augment_ids
from bertkit.distill.losses import (
    attention_loss,
    attention_probabilities,
    hidden_loss,
    layer_map,
    soft_target_loss,
)
from bertkit.predict import Predictor
from tests.conftest import randomize_

POSITIVE, NEGATIVE = "好棒赞", "差烂糟"
FILLER = "今天这个东西我觉得非常真的有点还是质量服务房间味道"
TRAIN_FLAGS = ["--batch-size", "16", "--warmup", "4", "--no-progress", "--no-bf16", "--log-every", "4"]


# ---- the losses, by hand -------------------------------------------------------------------------------------------

def test_soft_target_loss_by_hand():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [1.0, -1.0, 1.0]])
    for temperature in (1.0, 2.0, 4.0):
        expected = 0.0
        for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
            zs = sum(math.exp(v / temperature) for v in s_row)
            zt = sum(math.exp(v / temperature) for v in t_row)
            for s, t in zip(s_row, t_row, strict=True):
                p, q = math.exp(t / temperature) / zt, math.exp(s / temperature) / zs
                expected += p * math.log(p / q)
        expected *= temperature**2  # Hinton's T^2: the soft term keeps its weight at any temperature
        assert soft_target_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert soft_target_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # the gradient of the T^2-scaled term is (p_student - p_teacher) * T per logit
    logits = student.clone().requires_grad_(True)
    soft_target_loss(logits, teacher, 3.0).backward()
    expected_grad = (torch.softmax(student / 3.0, -1) - torch.softmax(teacher / 3.0, -1)) * 3.0
    torch.testing.assert_close(logits.grad, expected_grad)


def test_a_missing_choice_counts_as_probability_zero():
    """Multiple choice: a question with fewer choices has -inf logits in the empty slots; the loss is the loss over
    its real choices, finite, with finite gradients."""
    student = torch.tensor([[0.3, -0.2, float("-inf")]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, float("-inf")]])
    loss = soft_target_loss(student, teacher, 2.0)
    assert loss.item() == pytest.approx(soft_target_loss(student[:, :2], teacher[:, :2], 2.0).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_layer_map_takes_every_kth_teacher_layer():
    assert layer_map(6, 2) == [3, 6]
    assert layer_map(6, 4) == [1, 3, 4, 6]
    assert layer_map(12, 4) == [3, 6, 9, 12]
    assert layer_map(4, 4) == [1, 2, 3, 4]
    assert layer_map(2, 4) == [1, 1, 1, 2]  # a deeper student repeats teacher layers, never the embeddings
    with pytest.raises(ValueError):
        layer_map(0, 2)


def test_hidden_and_attention_losses_by_hand():
    mask = torch.tensor([[1, 1, 0]])
    a, b = torch.zeros(1, 3, 2), torch.zeros(1, 3, 2)
    b[0, 0] = torch.tensor([1.0, 3.0])  # mean square 5
    b[0, 2] = 100.0  # padding: ignored
    assert hidden_loss(a, b, mask).item() == pytest.approx(5.0)
    s, t = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    t[0, 0, 0, 1] = 1.0  # one head, one real pair: 1 / 2 heads
    t[0, 1, 1, 2] = 7.0  # a padded key: ignored
    assert attention_loss(s, t, mask).item() == pytest.approx(0.5)
    # different head counts: the head-averaged maps are compared
    assert attention_loss(s[:, :1], t, mask).item() == pytest.approx(0.25)


# ---- the taps read what the encoder computes, and the loss pairs the mapped layers ---------------------------------

def _encoder_pair(teacher_layers: int = 4, student_layers: int = 2):
    from bertkit.tasks.classification import SPEC, BertForSequenceClassification, ClassificationInfo

    info = ClassificationInfo(["a", "b"], 16)
    models = []
    for layers, hidden, heads, seed in ((teacher_layers, 32, 4, 0), (student_layers, 16, 2, 1)):
        config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=37, vocab_size=50, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, extra=SPEC.config_extra(info))
        models.append(randomize_(BertForSequenceClassification(config), seed=seed).eval())
    return models


def _layers_by_hand(model, ids, mask):
    """Each layer's output (B, T, H), the embeddings' first, computed without hooks on the dense layout."""
    from bertkit.model import Layout

    bert = model.bert
    layout = Layout(mask, *ids.shape, torch.float32, unpad=False)
    x = bert.embeddings(ids, torch.zeros_like(ids), layout)
    states = [layout.pad(x)]
    for layer in bert.layers:
        x = layer(x, layout)
        states.append(layout.pad(x))
    return states


def test_taps_record_each_layer_and_its_attention_map():
    from bertkit.distill.taps import Taps

    teacher, _ = _encoder_pair()
    teacher.eval()  # at inference a [CLS] head's last layer runs on the [CLS] rows only, except while tapped
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 3, 0, 0]])
    mask = (ids != 0).long()
    taps = Taps(teacher.bert)
    with torch.no_grad():
        teacher(ids, mask, torch.zeros_like(ids))
        recorded = taps.hidden()
        expected = _layers_by_hand(teacher, ids, mask)
        maps = teacher.bert.attention_maps(ids, mask)  # (L, B, N, T, T): what the model itself computes
    assert len(recorded) == 5 and not teacher.bert.narrow_last_layer
    taps.remove()
    assert teacher.bert.narrow_last_layer
    for ours, theirs in zip(recorded, expected, strict=True):
        torch.testing.assert_close(ours * mask[..., None], theirs * mask[..., None], atol=1e-5, rtol=1e-5)
    for layer, qkv in enumerate(taps.projections()):
        probs = attention_probabilities(qkv, mask, 4)
        real = (mask[:, None, :, None] * mask[:, None, None, :]).bool().expand_as(probs)
        torch.testing.assert_close(probs[real], maps[layer][real], atol=1e-5, rtol=1e-5)


def test_the_intermediate_losses_pair_student_layer_m_with_teacher_layer_m_times_k(tmp_path):
    """Teacher 4 layers, student 2: student layer 1 learns from teacher layer 2, layer 2 from layer 4 (and the
    embeddings from the embeddings), through the learned projection of width 16 -> 32."""
    from bertkit.distill.run import DistillOptions, DistillTask, Student
    from bertkit.distill.taps import Taps
    from bertkit.tasks.classification import DISTILL as CLASSIFICATION

    teacher_model, student_model = _encoder_pair()
    options = DistillOptions(hidden_weight=1.0, attention_weight=1.0, soft_weight=0.0, hard_weight=0.0)
    student = Student(student_model, CLASSIFICATION, 32, options)
    assert tuple(student.projection.weight.shape) == (32, 16)

    class Stub:  # what DistillTask reads of a Teacher and of the wrapped task
        model, config, info, fingerprint = teacher_model, teacher_model.config, None, ""
        train = ()

    task = DistillTask(Stub(), CLASSIFICATION, Stub(), student, options, None)
    assert task.mapping == [2, 4]
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 11, 3, 0, 0]])
    mask = (ids != 0).long()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        parts = task.loss(student, batch)
        s_states = [student.projection(h) for h in _layers_by_hand(student_model, ids, mask)]
        t_states = _layers_by_hand(teacher_model, ids, mask)
        s_maps, t_maps = student_model.bert.attention_maps(ids, mask), teacher_model.bert.attention_maps(ids, mask)
    expected_hidden = sum(hidden_loss(s_states[m], t_states[t], mask) for m, t in ((0, 0), (1, 2), (2, 4)))
    expected_attention = sum(attention_loss(s_maps[m], t_maps[t], mask) for m, t in ((0, 1), (1, 3)))
    assert parts["hidden"].item() == pytest.approx(expected_hidden.item(), rel=1e-4)
    assert parts["attention"].item() == pytest.approx(expected_attention.item(), rel=1e-4)
    other = sum(hidden_loss(s_states[m], t_states[t], mask) for m, t in ((0, 0), (1, 1), (2, 2)))
    assert abs(other.item() - expected_hidden.item()) > 1e-3  # another mapping gives another loss
    assert task.counts(batch) == {"hidden": 8.0, "attention": 8.0}  # real tokens
    Taps(teacher_model.bert)  # float layers only:
    from bertkit import quantize

    with pytest.raises(ValueError, match="float"):
        Taps(quantize(teacher_model, "int8").bert)


# ---- augmentation ---------------------------------------------------------------------------------------------------

def test_augmentation_replaces_the_given_share_half_by_mask_never_a_special_token():
    rng = np.random.default_rng(0)
    protected = {0, 2, 3}
    rows = [[2, *([10] * 3), *([11] * 1), 3] for _ in range(100)]  # piece 10 three times as frequent as 11
    sampler = PieceSampler(rows, protected)
    ids = [2] + [20] * 100_000 + [3]
    out = augment_ids(ids, rng, 0.2, mask_id=4, protected=protected, sampler=sampler)
    assert len(out) == len(ids) and out[0] == 2 and out[-1] == 3
    body = np.array(out[1:-1])
    changed = body != 20
    assert changed.mean() == pytest.approx(0.2, abs=0.005)
    assert (body[changed] == 4).mean() == pytest.approx(0.5, abs=0.01)
    drawn = body[changed & (body != 4)]
    assert set(drawn.tolist()) == {10, 11} and (drawn == 10).mean() == pytest.approx(0.75, abs=0.015)
    assert augment_ids([2, 3, 0], rng, 1.0, 4, protected, sampler) == [2, 3, 0]


# ---- a toy teacher taught to a smaller student -----------------------------------------------------------------------

def _toy_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """Sentiment decided by one keyword among filler characters."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if i % 2 else NEGATIVE))
        rows.append((str(i % 2), "".join(words)))
    return rows


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A toy sentiment set (train and a disjoint eval), a `tiny` teacher fine-tuned on it from scratch, and a
    smaller pre-trained student to start from (random weights, the teacher's vocabulary: 1 layer, hidden 32)."""
    from bertkit import BertForPreTraining

    root = tmp_path_factory.mktemp("distill")
    for name, count, seed in (("train", 96, 0), ("eval", 48, 1)):
        (root / f"{name}.tsv").write_text("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in _toy_rows(count, seed)),
                                          encoding="utf-8")
    tok = Tokenizer.train([t for _, t in _toy_rows(96, 0)], vocab_size=80, min_frequency=1)
    tok.save_pretrained(root / "vocab")
    assert main(["finetune", "--task", "classification", "--train", str(root / "train.tsv"), "--eval",
                 str(root / "eval.tsv"), "--tokenizer", str(root / "vocab"), "--model-size", "tiny", "--max-steps",
                 "40", "--lr", "2e-3", "--output-dir", str(root / "teacher"), *TRAIN_FLAGS]) == 0
    torch.manual_seed(0)
    small = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    BertForPreTraining(small).save_pretrained(root / "small")
    tok.save_pretrained(root / "small")
    return root


@pytest.fixture(scope="module")
def student(toy, tmp_path_factory) -> Path:
    """The toy teacher distilled into the smaller student: soft targets and hard labels, two augmented copies."""
    run = tmp_path_factory.mktemp("student") / "run"
    assert main(["distill", "--teacher", str(toy / "teacher" / "model"), "--train", str(toy / "train.tsv"), "--eval",
                 str(toy / "eval.tsv"), "--student-init", str(toy / "small"), "--augment", "2", "--max-steps", "60",
                 "--lr", "5e-3", "--output-dir", str(run), *TRAIN_FLAGS]) == 0
    return run


def _accuracy(directory: Path, data: Path, capsys) -> float:
    capsys.readouterr()
    assert main(["evaluate", str(directory), "--data", str(data), "--device", "cpu", "--precision", "fp32"]) == 0
    return json.loads(capsys.readouterr().out)["accuracy"]


def test_a_toy_teacher_distilled_into_a_smaller_student_reaches_its_accuracy(toy, student, capsys):
    teacher = toy / "teacher" / "model"
    teacher_accuracy = _accuracy(teacher, toy / "eval.tsv", capsys)
    assert teacher_accuracy >= 0.95
    assert _accuracy(student / "model", toy / "eval.tsv", capsys) >= teacher_accuracy
    s_config, t_config = (BertConfig.from_pretrained(d) for d in (student / "model", teacher))
    assert (s_config.num_hidden_layers, s_config.hidden_size) == (1, 32) < (t_config.num_hidden_layers,
                                                                          t_config.hidden_size)
    assert s_config.extra["id2label"] == t_config.extra["id2label"]
    assert (student / "model" / "vocab.txt").read_text() == (teacher / "vocab.txt").read_text()
    records = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_soft_cls", "loss_cls"} <= set(records[0])
    # the teacher's logits were computed once (at int8, `auto` on a CPU with VNNI), close to its fp32 logits
    [cached] = list((student / "teacher").glob("*/cls.npy"))
    marker = json.loads((cached.parent / "complete.json").read_text())
    assert marker["examples"] == 96 * 3
    from bertkit.precision import choose_precision

    assert marker["precision"] == choose_precision()[0]
    from bertkit.tasks.classification import read_examples

    texts = [e.text for e in read_examples(toy / "train.tsv")]
    fp32 = [list(r["probabilities"].values()) for r in Predictor(teacher, device="cpu").predict(texts)]
    cached_probabilities = torch.softmax(torch.from_numpy(np.load(cached)[: len(texts)]), -1)
    assert (cached_probabilities - torch.tensor(fp32)).abs().max() < 0.05


def test_the_student_is_an_ordinary_checkpoint(toy, student, tmp_path, capsys):
    """model/ holds what a fine-tuned checkpoint holds; predict (int8 agreeing with fp32), export and transformers
    take it as they take any classifier (the same logits, within 1e-5)."""
    model = student / "model"
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors", "task.json",
                                                       "tokenizer_config.json", "vocab.txt"]
    texts = [text for _, text in _toy_rows(48, 1)]
    fp32 = Predictor(model, device="cpu", precision="fp32").predict(texts)
    int8 = Predictor(model, device="cpu", precision="int8").predict(texts)
    assert sum(a["label"] == b["label"] for a, b in zip(fp32, int8, strict=True)) >= 46
    source = tmp_path / "in.txt"
    source.write_text("今天好\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(model), "--input", str(source), "--device", "cpu", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("0", "1")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    theirs = transformers.BertForSequenceClassification.from_pretrained(model).eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(model)
    batch = tokenizer(texts[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = theirs(**batch).logits
        got = Predictor(model, device="cpu").model(batch["input_ids"], batch["attention_mask"],
                                                   batch["token_type_ids"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    pytest.importorskip("onnxruntime")
    assert main(["export", str(model), "--onnx", str(tmp_path / "student.onnx")]) == 0


def _distill_args(toy: Path, output: Path, *extra: str) -> list[str]:
    return ["distill", "--teacher", str(toy / "teacher" / "model"), "--train", str(toy / "train.tsv"),
            "--student-init", str(toy / "small"), "--augment", "1", "--hidden-weight", "1", "--attention-weight", "0.5",
            "--max-steps", "12", "--save-every", "6", "--keep-checkpoints", "3", "--seed", "5", "--output-dir",
            str(output), *TRAIN_FLAGS, "--log-every", "2", *extra]


def test_resume_mid_distillation_equals_the_uninterrupted_run(toy, tmp_path, capsys):
    """Dropout on, every loss (so the projection too): a run resumed from its step-6 checkpoint ends with the
    uninterrupted run's weights and losses, bit for bit."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_distill_args(toy, full)) == 0
    assert "at fp32 (intermediate layers" in capsys.readouterr().out  # int8 layers expose none
    assert (full / "checkpoints" / "step-00000012" / "training_projection.safetensors").is_file()
    assert not list((full / "model").glob("training_*"))
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "model")
    shutil.rmtree(cut / "checkpoints" / "step-00000012")
    assert main(_distill_args(toy, cut, "--resume")) == 0
    a, b = load_file(full / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(d / "checkpoints" / "step-00000012" / "training_projection.safetensors") for d in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]

    assert losses(full) == losses(cut) and len(losses(full)) == 6
    capsys.readouterr()
    assert main(_distill_args(toy, cut, "--resume", "--temperature", "3")) == 2  # other losses: another run
    assert "differs from the one that wrote" in capsys.readouterr().err


def test_the_soft_target_cache_is_reused_and_resumes_the_same(toy, tmp_path):
    """Soft targets only: the teacher's logits are cached under the run; a resumed run reads them (or computes
    them again, the same, where they were lost) and ends as the uninterrupted run."""
    args = ["distill", "--teacher", str(toy / "teacher" / "model"), "--train", str(toy / "train.tsv"),
            "--student-init", str(toy / "small"), "--max-steps", "4", "--save-every", "2", "--keep-checkpoints", "3",
            *TRAIN_FLAGS]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*args, "--output-dir", str(full)]) == 0
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "model")
    shutil.rmtree(cut / "checkpoints" / "step-00000004")
    shutil.rmtree(cut / "teacher")
    assert main([*args, "--output-dir", str(cut), "--resume"]) == 0
    a, b = load_file(full / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in (cut / "teacher").iterdir()] == [p.name for p in (full / "teacher").iterdir()]
    assert main([*args, "--output-dir", str(cut), "--overwrite"]) == 0  # a fresh run deletes the old cache first


# ---- every covered task ------------------------------------------------------------------------------------------

def _multiple_choice_teacher(root: Path) -> tuple[Path, list]:
    from bertkit.tasks import task_spec
    from bertkit.train import TrainConfig

    data = root / "train.jsonl"
    rows = [{"question": "天气怎么样", "choices": ["很好", "很差", "一般"], "label": 0},
            {"question": "他去哪里", "choices": ["北京", "上海"], "label": 1}] * 3
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    Tokenizer.train(["天气怎么样很好很差一般他去哪里北京上海"], vocab_size=80, min_frequency=1).save_pretrained(
        root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=4, max_steps=2, lr=1e-3, warmup=0, progress=False,
                         bf16=False)
    task_spec("multiple_choice").finetune(data, config, tokenizer=root / "vocab", model_size="tiny", max_seq_len=32)
    return root / "run" / "model", [{"question": "天气怎么样", "choices": ["很好", "很差"]}]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict:
    """Task -> (a tiny teacher fine-tuned 2 steps, its training file, inputs to predict), made when first asked."""
    from tests.reliability.tiny_checkpoints import finetune_tiny

    made: dict = {}

    def teacher(task: str) -> tuple[Path, Path, list]:
        if task not in made:
            root = tmp_path_factory.mktemp(task)
            model, inputs = _multiple_choice_teacher(root) if task == "multiple_choice" else finetune_tiny(task, root)
            data = next(p for p in root.iterdir() if p.name.startswith("train"))
            made[task] = (model, data, inputs)
        return made[task]

    return teacher


@pytest.mark.parametrize("task", ["ner", "intent_slot", "relation", "multiple_choice"])
def test_every_covered_task_distils_into_a_checkpoint_that_predicts(task, teachers, tmp_path):
    """Each covered head through distill (hidden states too): unlabeled texts where the task reads plain text,
    augmented copies where it does not; the student predicts as its task does, and a tagger's emissions are what
    transformers' BertForTokenClassification computes from the same files."""
    teacher, data, inputs = teachers(task)
    extra = ["--augment", "1"]
    if task in ("ner", "intent_slot"):
        unlabeled = tmp_path / "unlabeled.txt"
        unlabeled.write_text("张三去上海\n李四在北京\n" if task == "ner" else "play song by adele\nweather in rome\n",
                             encoding="utf-8")
        extra = ["--unlabeled", str(unlabeled)]
    run = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher), "--train", str(data), "--student-size", "tiny",
                 "--max-steps", "3", "--batch-size", "4", "--hidden-weight", "1", "--output-dir", str(run),
                 "--no-progress", "--no-bf16", *extra]) == 0
    predictor = Predictor(run / "model", device="cpu")
    assert predictor.task == task and len(predictor.predict(inputs)) == len(inputs)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    if task != "ner":
        return
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    theirs = transformers.BertForTokenClassification.from_pretrained(run / "model").eval()
    tokenizer = transformers.BertTokenizerFast.from_pretrained(run / "model")
    words = list("张三去北京")
    batch = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    first = [batch.word_ids(0).index(w) for w in range(len(words))]
    with torch.no_grad():
        expected = theirs(**batch).logits[0, first]
        got = predictor.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                              torch.tensor([first]))
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_what_distillation_refuses_says_why(toy, teachers, tmp_path, capsys):
    from bertkit.distill.run import distill_head
    from bertkit.errors import DataError
    from bertkit.tasks import task_spec

    base = ["distill", "--teacher", str(toy / "teacher" / "model"), "--train", str(toy / "train.tsv"),
            "--output-dir", str(tmp_path / "run"), "--no-progress"]
    assert main([*base, "--student-size", "tiny", "--teacher-precision", "int8", "--hidden-weight", "1"]) == 2
    assert "int8 cannot give the teacher's intermediate layers" in capsys.readouterr().err
    other = tmp_path / "other"
    Tokenizer.train(["完全不同的词表"], vocab_size=40, min_frequency=1).save_pretrained(other)
    BertConfig.preset("tiny", vocab_size=40).save_pretrained(other)
    assert main([*base, "--student-init", str(other)]) == 2
    assert "is not the teacher's" in capsys.readouterr().err
    for task, why in (("spelling", "vocabulary-wide distribution"), ("triples", "independent sigmoid"),
                      ("qa", "spans scored over overlapping document windows")):
        with pytest.raises(DataError, match=f"not {task}: .*{why}"):
            distill_head(task_spec(task))
    for key, value, why in (("problem_type", "multi_label_classification", "a multi_label_classification head"),
                            ("long_text", "windows", "long texts in windows")):
        other = tmp_path / value
        shutil.copytree(toy / "teacher" / "model", other)
        for name in ("task.json", "config.json"):  # config.json: transformers' problem_type, which must agree
            if name == "task.json" or key == "problem_type":
                data = json.loads((other / name).read_text())
                (other / name).write_text(json.dumps({**data, key: value}))
        assert main([*base[:2], str(other), *base[3:], "--student-size", "tiny"]) == 2
        assert f"single-label classification of one sequence; the teacher has {why}" in capsys.readouterr().err
    relation, data, _ = teachers("relation")
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("a text\n", encoding="utf-8")
    assert main(["distill", "--teacher", str(relation), "--train", str(data), "--unlabeled", str(unlabeled),
                 "--student-size", "tiny", "--output-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "a relation input is more than a text" in capsys.readouterr().err


def test_a_student_cut_from_the_teacher_keeps_its_embeddings_and_every_kth_layer(toy, tmp_path, capsys):
    """`--student-layers N`: the teacher's float32 embeddings and pooler, its layers 0, L/N, 2L/N, ... (DistilBERT's
    start), a fresh head; N must be below the teacher's depth; the result distils like any student."""
    from bertkit.distill.run import build_student, teacher_layers_kept
    from bertkit.distill.teacher import load_teacher
    from bertkit.errors import DataError
    from bertkit.model import BertModel

    assert teacher_layers_kept(12, 6) == [0, 2, 4, 6, 8, 10] and teacher_layers_kept(6, 1) == [0]
    assert teacher_layers_kept(6, 2) == [0, 3] and teacher_layers_kept(4, 3) == [0, 1, 2]
    directory = toy / "teacher" / "model"
    teacher = load_teacher(directory, torch.device("cpu"), "int8", False)  # weights come from the checkpoint
    source = BertModel.from_pretrained(directory).state_dict()
    model = build_student(teacher, None, None, 0, layers=1)
    assert model.bert.config.num_hidden_layers == 1 and len(model.bert.layers) == 1
    for name, value in model.bert.state_dict().items():
        torch.testing.assert_close(value, source[name], rtol=0, atol=0)  # layers.0.* is the teacher's layers.0.*
    teacher_head = dict(teacher.model.named_parameters())
    head = [(p, teacher_head[n]) for n, p in model.named_parameters()
            if not n.startswith("bert.") and n in teacher_head]
    assert head and any(not torch.equal(ours, theirs) for ours, theirs in head)
    with pytest.raises(DataError, match="student keeps 1 to 1"):
        build_student(teacher, None, None, 0, layers=2)
    run = tmp_path / "cut"
    assert main(["distill", "--teacher", str(directory), "--train", str(toy / "train.tsv"), "--eval",
                 str(toy / "eval.tsv"), "--student-layers", "1", "--augment", "2", "--max-steps", "60", "--lr",
                 "2e-3", "--output-dir", str(run), *TRAIN_FLAGS]) == 0
    assert _accuracy(run / "model", toy / "eval.tsv", capsys) >= _accuracy(directory, toy / "eval.tsv", capsys) - 0.05
