"""ONNX export: onnxruntime equals PyTorch within 1e-4, and the Predictor runs on the ONNX encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertkit import BertModel, Tokenizer
from bertkit.cli import main
from bertkit.predict import Predictor
from tests.serving import make_ner_checkpoint

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: ONNX parity cannot be checked")


def test_minilm_onnx_equals_torch_with_dynamic_axes(tmp_path, minilm_dir, capsys):
    path = tmp_path / "minilm.onnx"
    assert main(["export", str(minilm_dir), "--onnx", str(path)]) == 0
    assert "max |onnxruntime - torch|" in capsys.readouterr().out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_pretrained(minilm_dir)
    model = BertModel.from_pretrained(minilm_dir)
    for texts in (["one"], ["a longer batch of text", "with padding", "and a third, much longer sentence here"]):
        batch = tok(texts)  # other batch and sequence sizes than the export example
        hidden, pooled = session.run(None, {k: v.numpy() for k, v in batch.items()})
        with torch.no_grad():
            expected = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        keep = batch["attention_mask"].bool().numpy()
        assert np.abs(hidden[keep] - expected.last_hidden_state.numpy()[keep]).max() <= 1e-4
        assert np.abs(pooled - expected.pooler_output.numpy()).max() <= 1e-4


def test_predictor_on_onnx_encoder(tmp_path):
    checkpoint = make_ner_checkpoint(tmp_path)
    path = tmp_path / "ner.onnx"
    assert main(["export", str(checkpoint), "--onnx", str(path)]) == 0
    texts = ["张三去北京了", "李四去上海了", "王五"]
    torch_out = Predictor(checkpoint).predict(texts)
    onnx_predictor = Predictor(checkpoint, onnx=path)
    assert onnx_predictor.predict(texts) == torch_out
    emissions = []
    for predictor in (Predictor(checkpoint), onnx_predictor):
        batch = predictor.tokenizer(texts)
        index = torch.arange(batch["input_ids"].shape[1]).expand(3, -1)
        with torch.no_grad():
            emissions.append(predictor.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                             index))
    keep = batch["attention_mask"].bool()
    assert (emissions[0][keep] - emissions[1][keep]).abs().max() <= 1e-4
