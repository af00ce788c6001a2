"""The BERT encoder and its pre-training heads (MLM tied to the word embeddings, NSP), top to bottom in one file.

Shape legend: B batch, T tokens (padded length), H hidden, N heads, D head dim (H = N * D), I intermediate,
V vocabulary. Models return tensors in a NamedTuple; losses live with the tasks and the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertkit.config import BertConfig


class BertOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, H)
    pooler_output: Tensor  # (B, H)


class PreTrainingOutput(NamedTuple):
    mlm_logits: Tensor  # (B, T, V)
    nsp_logits: Tensor  # (B, 2)
    last_hidden_state: Tensor  # (B, T, H)
    pooler_output: Tensor  # (B, H)


_ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, as Google's BERT
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def check_inputs(
    config: BertConfig, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None
) -> None:
    """Raise a clear error for inputs that would otherwise fail deep inside torch (or silently read garbage)."""
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2:
        hint = " (add a batch dimension: input_ids.unsqueeze(0))" if input_ids.dim() == 1 else ""
        raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}{hint}")
    seq_len = input_ids.shape[1]
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"sequence length {seq_len} exceeds max_position_embeddings={config.max_position_embeddings}; "
            f"truncate the input (tokenizer(..., truncation=True, max_length={config.max_position_embeddings}))"
        )
    if input_ids.numel():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"input_ids contains token id {bad}, outside the vocabulary [0, {config.vocab_size}); "
                "was the text tokenized with this model's vocab.txt?"
            )
    for name, tensor in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if tensor is None:
            continue
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but input_ids has shape {tuple(input_ids.shape)}"
            )
        if tensor.is_floating_point() or tensor.is_complex():
            raise TypeError(f"{name} must be an integer or bool tensor, got dtype {tensor.dtype}")
    if token_type_ids is not None and token_type_ids.numel():
        low, high = int(token_type_ids.min()), int(token_type_ids.max())
        if low < 0 or high >= config.type_vocab_size:
            raise ValueError(
                f"token_type_ids contains segment id {high if high >= config.type_vocab_size else low}, outside "
                f"[0, type_vocab_size={config.type_vocab_size})"
            )


class CheckpointIO:
    """`from_pretrained(dir)` / `save_pretrained(dir)` in Hugging Face layout, shared by every model class."""

    hf_architecture: str
    hf_head_renames: tuple[tuple[str, str], ...] = ()  # (bertkit prefix, transformers prefix) for head weights

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs):
        from bertkit.checkpoint import load_model  # checkpoint.py imports this module

        return load_model(cls, directory, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        from bertkit.checkpoint import save_model

        return save_model(self, directory)


class Embeddings(nn.Module):
    """Word + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.word(input_ids) + self.token_type(token_type_ids) + self.position(positions)  # (B, T, H)
        return self.dropout(self.norm(x))


class EncoderLayer(nn.Module):
    """Post-LN Transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)), with one fused QKV projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(H, 3 * H)  # rows: [query; key; value]
        self.attn_out = nn.Linear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(H, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.attn_dropout = config.attention_probs_dropout_prob
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, attn_bias: Tensor | None) -> Tensor:
        B, T, H = x.shape
        N = self.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, N, H // N).permute(2, 0, 3, 1, 4)  # each (B, N, T, D)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout)  # (B, N, T, D)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        x = self.attn_norm(x + self.dropout(self.attn_out(y)))
        h = self.ffn_out(self.act(self.ffn_in(x)))  # (B, T, I) -> (B, T, H)
        return self.ffn_norm(x + self.dropout(h))


def attention_bias(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, T) mask of 1 = token, 0 = padding -> additive (B, 1, 1, T) bias: 0 for tokens, dtype-min for padding.

    An additive bias (not a boolean mask) keeps a fully padded row finite instead of NaN, as Hugging Face does.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, T)
    if bool(keep.all()):
        return None
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


class BertModel(CheckpointIO, nn.Module):
    """The encoder: embeddings, L post-LN layers, and the tanh pooler over the [CLS] position."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        init_weights(self, config)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> BertOutput:
        check_inputs(self.config, input_ids, attention_mask, token_type_ids)
        input_ids = input_ids.long()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids.long())  # (B, T, H)
        bias = attention_bias(attention_mask, x.dtype)  # (B, 1, 1, T) or None
        for layer in self.layers:
            x = layer(x, bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, H)
        return BertOutput(x, pooled)



class BertForPreTraining(CheckpointIO, nn.Module):
    """BERT with the MLM head (decoder tied to the word embeddings) and the NSP head."""

    hf_architecture = "BertForPreTraining"
    hf_head_renames = (
        ("mlm_transform.", "cls.predictions.transform.dense."),
        ("mlm_norm.", "cls.predictions.transform.LayerNorm."),
        ("mlm_bias", "cls.predictions.bias"),
        ("nsp.", "cls.seq_relationship."),
    )

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        H = config.hidden_size
        self.mlm_transform = nn.Linear(H, H)
        self.mlm_act = _ACTIVATIONS[config.hidden_act]
        self.mlm_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.nsp = nn.Linear(H, 2)
        init_weights(self, config)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """(..., H) hidden states -> (..., V) vocabulary logits."""
        h = self.mlm_norm(self.mlm_act(self.mlm_transform(hidden)))
        return F.linear(h, self.bert.embeddings.word.weight, self.mlm_bias)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> PreTrainingOutput:
        out = self.bert(input_ids, attention_mask, token_type_ids)
        return PreTrainingOutput(
            mlm_logits=self.mlm_logits(out.last_hidden_state),  # (B, T, V)
            nsp_logits=self.nsp(out.pooler_output),  # (B, 2)
            last_hidden_state=out.last_hidden_state,
            pooler_output=out.pooler_output,
        )



def init_weights(module: nn.Module, config: BertConfig) -> None:
    """BERT's initialisation: N(0, initializer_range) for weights, zero biases, LayerNorm at identity."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=config.initializer_range)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=config.initializer_range)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
