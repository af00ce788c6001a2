"""The ner task's global_pointer head: windows and their merging by hand, then one tiny model fine-tuned on a toy
nested, multi-label set (texts longer than a window) that scores F1 1.0, predicts the inner entities, and does so
through the Predictor (fp32 and int8), `bertkit evaluate` and the server."""

from __future__ import annotations

import json

import pytest
import torch

from bertkit import DataError, Tokenizer
from bertkit.tasks import ner
from bertkit.tasks.ner_spans import Window, best_window, merge_windows, token_span, window_starts
from bertkit.train import TrainConfig

PEOPLE = [("张三", "北京", "读书"), ("李四", "上海", "工作"), ("王五", "广州", "教书"), ("赵六", "深圳", "上课")]


def toy_rows() -> list[dict]:
    """Each sentence: a person, a university (ORG) with its city inside (LOC and GPE: two types, one span)."""
    rows = []
    for name, city, verb in PEOPLE:
        rows.append({"text": f"{name}在{city}大学{verb}",
                     "label": [[0, 2, "PER"], [3, 7, "ORG"], [3, 5, "LOC"], [3, 5, "GPE"]]})
        rows.append({"text": f"{name}去{city}了", "label": [[0, 2, "PER"], [3, 5, "LOC"], [3, 5, "GPE"]]})
    return rows


def test_windows_cover_every_token_and_the_last_ends_at_the_text_end():
    assert window_starts(5, 8, 4) == [0]
    assert window_starts(10, 6, 3) == [0, 3, 4]
    assert window_starts(10, 6, 50) == [0, 4]  # a stride past the width is capped: no token skipped
    for count, width, stride in [(17, 5, 2), (9, 8, 4), (100, 30, 7)]:
        starts = window_starts(count, width, stride)
        covered = {t for s in starts for t in range(s, s + width)}
        assert covered == set(range(count)) and starts[-1] + width == count


def test_token_span_maps_characters_to_the_tokens_that_cover_them():
    starts, ends = [0, 3, 4, 8], [3, 4, 8, 9]  # tokens "New", " ", "York", "!" (say)
    assert token_span(starts, ends, 4, 8) == (2, 2, True)
    assert token_span(starts, ends, 0, 8) == (0, 2, True)
    assert token_span(starts, ends, 1, 6) == (0, 2, False)  # starts and ends inside tokens: widened
    assert token_span([0, 5], [2, 7], 2, 5) is None  # only the gap between tokens


def test_each_span_comes_from_the_window_that_holds_it_farthest_from_its_edges():
    extents = [(0, 6), (3, 9), (4, 10)]
    assert best_window(extents, 4, 5) == 1  # margins 0, 1, 0
    assert best_window(extents, 0, 1) == 0 and best_window(extents, 8, 9) == 2 and best_window(extents, 2, 7) == -1
    # ten tokens of one character each; windows of 6 every 3 ([CLS] is position 0 of each window)
    windows = [Window(0, first, [2] * 8, []) for first in (0, 3, 4)]
    offsets = [[(i, i + 1) for i in range(10)]]
    found = [
        [(0, 5, 6, 1.0), (1, 6, 6, 2.0), (0, 1, 2, 3.0)],  # tokens 4..5 cut at the edge; 5..5; 0..1
        [(0, 2, 3, 4.0)],  # tokens 4..5 held whole: kept from here (and 5..5 not found here: dropped)
        [(0, 1, 2, 5.0), (1, 5, 6, 6.0)],  # 4..5 again (margin 0), and 8..9 at the text's end: kept
    ]
    assert merge_windows(windows, found, offsets) == [[(0, 0, 2, 3.0), (0, 4, 6, 4.0), (1, 8, 10, 6.0)]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("gp")
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in toy_rows() * 3), encoding="utf-8")
    Tokenizer.train([r["text"] for r in toy_rows()], vocab_size=80, min_frequency=1).save_pretrained(root / "vocab")
    config = TrainConfig(output_dir=str(root / "run"), batch_size=8, max_steps=60, lr=5e-3, warmup=2, log_every=10,
                         progress=False, bf16=False, seed=0)
    # windows of 8 tokens every 4: a nine-character sentence is read in two windows
    result = ner.finetune(data, config, eval_file=data, fmt="doccano", tokenizer=root / "vocab", model_size="tiny",
                          max_seq_len=10, options=ner.NerOptions(head="global_pointer", doc_stride=4))
    return root, result


def test_global_pointer_learns_nested_and_multi_label_entities_to_f1_one(checkpoint):
    root, result = checkpoint
    assert result.metrics["f1"] == 1.0 and result.metrics["GPE_f1"] == 1.0 and result.metrics["ORG_recall"] == 1.0
    info = json.loads((root / "run" / "model" / "task.json").read_text())
    assert info["head"] == "global_pointer" and info["labels"] == ["GPE", "LOC", "ORG", "PER"]
    config = json.loads((root / "run" / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForGlobalPointer"] and config["bertkit_head"] == "global_pointer"
    assert config["id2label"] == {"0": "GPE", "1": "LOC", "2": "ORG", "3": "PER"}


def _entities(result: dict) -> set[tuple[str, int, int, str]]:
    return {(e["type"], e["start"], e["end"], e["text"]) for e in result["entities"]}


NESTED = {("PER", 0, 2, "赵六"), ("ORG", 3, 7, "上海大学"), ("LOC", 3, 5, "上海"), ("GPE", 3, 5, "上海")}


def test_the_predictor_finds_the_inner_entities_and_int8_agrees(checkpoint):
    from bertkit.predict import Predictor

    root, _ = checkpoint
    fp32 = Predictor(root / "run" / "model", device="cpu")
    text = "赵六在上海大学教书"  # an unseen combination
    (result,) = fp32.predict([text])
    assert _entities(result) == NESTED
    assert fp32.predict(["   了"])[0]["entities"] == []
    int8 = Predictor(root / "run" / "model", device="cpu", precision="int8")
    assert int8.precision == "int8" and type(int8.model.head.query_key) is torch.nn.Linear  # the head stays float
    (quantized,) = int8.predict([text])
    assert _entities(quantized) == NESTED
    scores = {(e["type"], e["start"], e["end"]): e["score"] for e in result["entities"]}
    for e in quantized["entities"]:
        assert abs(e["score"] - scores[(e["type"], e["start"], e["end"])]) < 0.1 * max(1.0, abs(e["score"]))
    assert int8.evaluate(root / "train.jsonl", "doccano")["f1"] == 1.0


def test_evaluate_and_predict_from_the_command_line(checkpoint, tmp_path, capsys):
    from bertkit.cli import main

    root, _ = checkpoint
    assert main(["evaluate", str(root / "run" / "model"), "--data", str(root / "train.jsonl"), "--format",
                 "doccano", "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["task"] == "ner" and metrics["f1"] == 1.0 and metrics["LOC_f1"] == 1.0
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"text": "赵六去上海了", "label": [[0, 2, "NAME"]]}, ensure_ascii=False) + "\n",
                       encoding="utf-8")
    with pytest.raises(DataError, match=r"unknown\.jsonl:1: entity 'NAME' at 0\.\.2 has a type that is not among the "
                                        r"model's entity types"):
        ner.evaluate_file(*_loaded(root), unknown, "doccano")


def _loaded(root):
    from bertkit.predict import Predictor

    predictor = Predictor(root / "run" / "model", device="cpu")
    return predictor.model, predictor.tokenizer, predictor.info


def test_the_server_returns_nested_spans(checkpoint):
    from bench._serving import Server

    root, _ = checkpoint
    server = Server(root / "run" / "model", "--device", "cpu", "--precision", "fp32")
    try:
        status, health, _ = server.get("/health")
        assert status == 200 and health["task"] == "ner" and health["labels"] == ["GPE", "LOC", "ORG", "PER"]
        status, body, _ = server.post("/predict", {"inputs": ["赵六在上海大学教书"]})
        assert status == 200 and _entities(body["predictions"][0]) == NESTED
    finally:
        server.stop()


def test_options_of_the_other_head_are_refused(tmp_path):
    config = TrainConfig(output_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(DataError, match="--crf: tagger options; the global_pointer head scores spans"):
        ner.finetune(tmp_path / "x", config, options=ner.NerOptions(head="global_pointer", crf=True))
    with pytest.raises(DataError, match="--doc-stride and --span-threshold apply to --head global_pointer"):
        ner.finetune(tmp_path / "x", config, options=ner.NerOptions(doc_stride=32))


def test_the_onnx_encoder_predicts_the_same_spans(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from bertkit.cli import main
    from bertkit.predict import Predictor

    root, _ = checkpoint
    path = tmp_path / "gp.onnx"
    assert main(["export", str(root / "run" / "model"), "--onnx", str(path)]) == 0
    (result,) = Predictor(root / "run" / "model", onnx=path).predict(["赵六在上海大学教书"])
    assert _entities(result) == NESTED


def test_a_span_checkpoint_without_its_task_json_says_it_was_lost(checkpoint, tmp_path):
    import shutil

    from bertkit.errors import CheckpointError
    from bertkit.predict import Predictor

    root, _ = checkpoint
    copy = shutil.copytree(root / "run" / "model", tmp_path / "model")
    (copy / "task.json").unlink()
    with pytest.raises(CheckpointError, match=r"task\.json: not found, but .* holds a fine-tuned model "
                                              r"\(BertForGlobalPointer; config\.json has bertkit_head, id2label\)"):
        Predictor(copy, device="cpu")


def test_the_web_page_shows_nested_spans_inside_their_outer_entity(checkpoint, tmp_path):
    from tests.test_browser import CHROMEDRIVER, CHROMIUM, _driver

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them)")
    from bench._serving import Server
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, _ = checkpoint
    server = Server(root / "run" / "model", "--device", "cpu", "--precision", "fp32")
    driver = _driver(tmp_path)
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "task ner" in d.find_element(By.ID, "model-info").text)
        driver.find_element(By.ID, "field-text").send_keys("赵六在上海大学教书")
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.find_element(By.ID, "result").get_attribute("data-done") == "1")
        marks = driver.find_elements(By.CSS_SELECTOR, "#entities mark")
        shown = {(m.get_attribute("data-type"), int(m.get_attribute("data-start")), int(m.get_attribute("data-end")))
                 for m in marks}
        assert shown == {(kind, start, end) for kind, start, end, _ in NESTED}
        inner = driver.find_elements(By.CSS_SELECTOR, "#entities mark[data-type=ORG] mark")
        assert {m.get_attribute("data-type") for m in inner} == {"LOC", "GPE"}  # the city inside the university
        assert driver.find_element(By.ID, "entities").text.replace("\n", "").startswith("赵六PER在上海")
    finally:
        driver.quit()
        server.stop()


def test_transformers_has_no_span_head_and_loads_the_encoder_alone(tmp_path):
    import transformers

    from bertkit import BertConfig
    from bertkit.tasks.ner_spans import BertForGlobalPointer
    from tests.conftest import batch_with_padding_and_pairs, randomize_

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        vocab_size=99, extra={"id2label": {"0": "LOC", "1": "ORG"}})
    model = randomize_(BertForGlobalPointer(config), seed=5).eval()
    model.save_pretrained(tmp_path)
    transformers.logging.set_verbosity_error()
    theirs = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == "BertModel"
    ids, mask, types = batch_with_padding_and_pairs(99)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours = model.bert(ids, mask, types).last_hidden_state
    keep = mask.bool()
    assert torch.allclose(ours[keep], expected[keep], atol=1e-5)


def test_distill_refuses_a_span_head_teacher_saying_why(checkpoint, tmp_path, capsys):
    from bertkit.cli import main

    root, _ = checkpoint
    assert main(["distill", "--teacher", str(root / "run" / "model"), "--train", str(root / "train.jsonl"),
                 "--format", "doccano", "--student-size", "tiny", "--max-steps", "1", "--no-progress",
                 "--output-dir", str(tmp_path / "student")]) != 0
    assert "this teacher's head is global_pointer, whose span scores are independent sigmoids" in (
        capsys.readouterr().err)
    assert not (tmp_path / "student" / "model").exists()
