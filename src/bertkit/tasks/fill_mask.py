"""Fill-mask: the most likely tokens at each [MASK] of a text, from any pre-trained checkpoint with an MLM head (a
bertkit pre-training run's model, or transformers' BertForPreTraining / BertForMaskedLM); no training. Results are
transformers' `pipeline("fill-mask")` results: `{"score", "token", "token_str", "sequence"}` per candidate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.errors import CheckpointError, DataError
from bertkit.model import BertForMaskedLM, BertForPreTraining
from bertkit.tasks.base import pad_sequences, run_batches
from bertkit.tasks.spec import InputField, TaskSpec, Work, defaults_for, int_field, one_sequence, seq_len_field
from bertkit.tokenizer import Tokenizer

NAME = "fill_mask"
# [MASK]s a text may hold: each costs a vocabulary-wide row of logits (V floats) and top_k decoded sequences, so a
# text of 500 masks would be 500 x V floats and 2,500 sequences of 512 tokens to decode and send.
MAX_MASKS = 16
MLM_ARCHITECTURES = {"BertForPreTraining": BertForPreTraining, "BertForMaskedLM": BertForMaskedLM}


@dataclass
class FillMaskInfo:
    max_seq_len: int = seq_len_field(512)
    top_k: int = int_field(1, 1000, 5, "candidates per mask")


def load(directory: Path, config: BertConfig) -> nn.Module:
    """The checkpoint's own MLM model class, loaded strictly (every weight present and used)."""
    cls = next((MLM_ARCHITECTURES[a] for a in config.architectures if a in MLM_ARCHITECTURES), None)
    if cls is None:
        raise CheckpointError(f"{directory}: fill-mask needs an MLM head (architectures BertForPreTraining or "
                              f"BertForMaskedLM); this checkpoint is {config.architectures}")
    return cls.from_pretrained(directory, strict=True, config=config)


def encode(tokenizer: Tokenizer, texts: list[str], max_seq_len: int) -> list[list[int]]:
    """Token ids of each text, whole: a text longer than max_seq_len is an error (cutting it could cut a mask)."""
    rows = []
    for index, encoding in enumerate(tokenizer.encode_batch(texts)):
        if len(encoding.ids) > max_seq_len:
            raise DataError(f"input {index}: {len(encoding.ids)} tokens, more than max_seq_len={max_seq_len} (cutting "
                            "the text could cut a mask); shorten it")
        masks = encoding.ids.count(tokenizer.mask_token_id)
        if not masks:
            mask = tokenizer.options.mask_token
            raise DataError(f"input {index}: no {mask} in the text; write {mask} where a token should be predicted")
        if masks > MAX_MASKS:
            raise DataError(f"input {index}: {masks} {tokenizer.options.mask_token} tokens; at most {MAX_MASKS} a "
                            "text (each gets top_k candidates, each a whole filled-in sequence)")
        rows.append(list(encoding.ids))
    return rows


def _logits(model: nn.Module, batch: dict[str, Tensor], mask_id: int) -> list[Tensor]:
    """(masks, V) logits per row, at its [MASK] positions only (the vocabulary projection runs nowhere else)."""
    positions = (batch["input_ids"] == mask_id) & batch["attention_mask"].bool()
    out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mlm_positions=positions)
    logits = (out.mlm_logits if isinstance(out, tuple) else out).float().cpu()  # (M, V), row-major over the mask
    return list(torch.split(logits, positions.sum(1).tolist()))


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Tokenizer, info: FillMaskInfo, inputs: list[dict[str, Any]]
            ) -> list[dict[str, Any]]:
    """Per input, `masks`: for each [MASK] in order, the top_k candidates as transformers' fill-mask pipeline
    gives them (a text with several masks: each mask's candidates, the other masks left in its `sequence`; as
    there, [PAD] tokens are left out of a `sequence`, a predicted one too)."""
    rows = encode(tokenizer, [i["text"] for i in inputs], info.max_seq_len)
    mask_id = tokenizer.mask_token_id
    logits = run_batches(model, rows, lambda chunk: pad_sequences(chunk, tokenizer.pad_token_id),
                         lambda m, batch: _logits(m, batch, mask_id))
    results = []
    for ids, row_logits in zip(rows, logits, strict=True):
        probs = row_logits.softmax(dim=-1)  # (masks, V)
        values, tokens = probs.topk(min(info.top_k, probs.shape[-1]))
        single = len(row_logits) == 1
        where = [i for i, t in enumerate(ids) if t == mask_id]
        masks = []
        for position, scores, candidates in zip(where, values.tolist(), tokens.tolist(), strict=True):
            row = []
            for score, token in zip(scores, candidates, strict=True):
                filled = [t for t in [*ids[:position], token, *ids[position + 1 :]] if t != tokenizer.pad_token_id]
                row.append({"score": score, "token": token,
                            "token_str": tokenizer.decode([token], skip_special_tokens=False),
                            "sequence": tokenizer.decode(filled, skip_special_tokens=single)})
            masks.append(row)
        results.append({"masks": masks})
    return results


def pipeline_output(result: dict[str, Any]) -> list[Any]:
    """A result shaped as transformers' pipeline returns it: the candidate list for one mask, a list of lists
    for several."""
    return result["masks"][0] if len(result["masks"]) == 1 else result["masks"]


def work(item: dict[str, Any], info: FillMaskInfo) -> Work:
    """One sequence to encode, and top_k whole sequences to decode and send for each [MASK]: counted as tokens."""
    encoded = one_sequence(item, info)
    return encoded + Work(0, item["text"].count("[MASK]") * info.top_k * encoded.tokens)


SPEC = TaskSpec(
    name=NAME,
    description="the most likely tokens at each [MASK] (from a pre-trained MLM)",
    model=BertForMaskedLM,
    info=FillMaskInfo,
    inputs=(InputField("text", "text with one or more [MASK] tokens", multiline=True),),
    predict=predict,
    view={"candidates": "masks"},
    example={"text": "The capital of France is [MASK]."},
    load=load,
    work=work,
    pretrained_info=defaults_for(FillMaskInfo),
    not_distilled="a pre-trained head, not a fine-tuned task",
)
