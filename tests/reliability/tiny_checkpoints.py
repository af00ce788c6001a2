"""Tiny fine-tuned checkpoints built in milliseconds (random weights, no training) for the checkpoint tests."""

from __future__ import annotations

from pathlib import Path

from bertkit import BertConfig, Tokenizer
from bertkit.tasks.base import write_task_info
from bertkit.tasks.classification import BertForSequenceClassification, label_config
from tests.conftest import randomize_

TEXTS = ["这家酒店非常好，服务很棒", "房间太差了，服务很糟糕", "环境好，很满意", "糟糕透了，不满意", "hello world"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def make_classifier(directory: Path, labels: tuple[str, ...] = ("neg", "pos"), seed: int = 0) -> Path:
    """A classification checkpoint as `finetune` writes it: weights, config.json, vocab.txt, task.json."""
    tok = Tokenizer.train(TEXTS, vocab_size=80, min_frequency=1)
    config = BertConfig(**TINY, vocab_size=len(tok), pad_token_id=tok.pad_token_id, extra=label_config(list(labels)))
    model = randomize_(BertForSequenceClassification(config), seed=seed)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    write_task_info(directory, {"task": "classification", "labels": list(labels), "max_seq_len": 32})
    return directory
