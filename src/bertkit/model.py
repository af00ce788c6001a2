"""The BERT encoder and its pre-training heads (MLM tied to the word embeddings, NSP), top to bottom in one file.

Shape legend: B batch, T tokens (padded length), S rows the layers work on (the B*T positions, or only the real
tokens when the batch has padding), H hidden, N heads, D head dim (H = N * D), I intermediate, V vocabulary,
M masked positions.

No work on padding: every token-wise op (embeddings, QKV, FFN, LayerNorm) runs on the (S, H) matrix of real
tokens; attention runs per sequence; outputs are re-padded (zeros at padding) only at the end. Models return
tensors in a NamedTuple; losses live with the tasks and the training loop.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from bertkit.config import BertConfig
from bertkit.threads import GOVERNOR


class BertOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, H)
    pooler_output: Tensor  # (B, H)


class PreTrainingOutput(NamedTuple):
    mlm_logits: Tensor  # (B, T, V), or (M, V) for the positions selected by `mlm_positions`
    nsp_logits: Tensor  # (B, 2)
    last_hidden_state: Tensor  # (B, T, H)
    pooler_output: Tensor  # (B, H)


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with tanh's approximation (hidden_act gelu_new / gelu_pytorch_tanh)."""
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU, as Google's BERT
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": F.relu,
}


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """Bool mask, True with probability 1 - p (p resolved to 1/65536), drawn from torch's seeded generator.

    On CPU, torch's Bernoulli sampler costs ~6 ns per element (13 ms for one BERT-small activation); drawing 64
    random bits at a time and comparing 16-bit slices costs a quarter of that and makes dropout no longer the
    largest non-matmul cost of a training step.
    """
    if device.type != "cpu":
        return torch.empty(shape, device=device).bernoulli_(1.0 - p).bool()
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits random
    threshold = round(p * 65536) - 32768  # P(int16 < threshold) = p
    return words.view(torch.int16)[:numel].view(shape) >= threshold


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, same distribution as F.dropout, faster on CPU (see keep_mask)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    keep = keep_mask(x.shape, p, x.device)
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(D) + bias) v with dropout on the probabilities; (…, N, T, D) in and out.

    Without dropout this is SDPA's fused kernel. With dropout, SDPA on CPU falls back to its math path and
    Bernoulli sampling; the same math here uses the faster mask (softmax accumulates in fp32 for bf16 inputs).
    """
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-1, -2))  # (…, N, T, T)
    if bias is not None:
        scores = scores + bias
    probs = dropout(torch.softmax(scores, dim=-1), dropout_p, training=True)
    return torch.matmul(probs, v)  # (…, N, T, D)


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
    uses_pooler: bool = True  # False: the head never reads the pooler; from a checkpoint without one, it has none

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs):
        from bertkit.checkpoint import load_model  # checkpoint.py imports this module

        return load_model(cls, directory, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        from bertkit.checkpoint import save_model

        return save_model(self, directory)


class Layout:
    """Where a (B, T) batch's tokens sit in the (S, H) activations, and how attention reaches them.

    Packed (the default when the mask has padding): S = real tokens, attention per sequence.
    Dense: S = B * T, attention over the padded batch with an additive mask (no padding, or `unpad=False`).
    """

    def __init__(self, attention_mask: Tensor | None, batch: int, seq_len: int, dtype: torch.dtype,
                 unpad: bool = True) -> None:
        self.batch, self.seq_len = batch, seq_len
        self.dtype = dtype
        self.record: list[Tensor] | None = None  # when a list: attention probabilities are computed and kept
        self.indices: Tensor | None = None  # (S,) positions of the real tokens in the flattened (B * T) batch
        self.bias: Tensor | None = None  # (B, 1, 1, T) additive mask for the dense path
        self.keep: Tensor | None = None  # (B, T) the attention mask as booleans, where it has padding
        self.first_only = False  # True once the rows are each sequence's first token only, (B, H)
        if attention_mask is None:
            return
        keep = attention_mask.to(torch.bool)  # (B, T)
        if bool(keep.all()):
            return
        self.keep = keep
        lengths = keep.sum(dim=1)  # (B,)
        # Packing needs every sequence to start with a real token (its [CLS], read by the pooler).
        if unpad and bool(keep[:, 0].all()):
            self.indices = keep.flatten().nonzero().squeeze(1)  # (S,)
            self.lengths = lengths.tolist()
            ends = torch.cumsum(lengths, 0)
            self.starts = ends - lengths  # (B,) row of each sequence's first token
            self.offsets = F.pad(ends, (1, 0))  # (B + 1,) for the var-len kernel
            return
        self.bias = additive_mask(keep, dtype)

    @property
    def packed(self) -> bool:
        return self.indices is not None

    def rows(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (S, ...): the rows the layers work on."""
        flat = x.reshape(self.batch * self.seq_len, *x.shape[2:])
        return flat if self.indices is None else flat.index_select(0, self.indices)

    def pad(self, x: Tensor) -> Tensor:
        """(S, ...) -> (B, T, ...), zeros at padding."""
        if self.indices is None:
            return x.view(self.batch, self.seq_len, *x.shape[1:])
        out = x.new_zeros(self.batch * self.seq_len, *x.shape[1:])
        return out.index_copy(0, self.indices, x).view(self.batch, self.seq_len, *x.shape[1:])

    def first_tokens(self, x: Tensor) -> Tensor:
        """(S, H) -> (B, H): the [CLS] row of each sequence (rows already narrowed to them: as they are)."""
        if self.first_only:
            return x
        if self.indices is None:
            return x.view(self.batch, self.seq_len, -1)[:, 0]
        return x.index_select(0, self.starts)

    def first_token_attention(self, qkv: Tensor, num_heads: int, dropout: float) -> Tensor:
        """(S, 3H) fused projections -> (B, H): the attention output of each sequence's first token only (its
        query against all of its keys), in one call over the padded batch."""
        H = qkv.shape[1] // 3
        bias = self.bias
        if self.indices is not None:
            assert self.keep is not None
            bias = additive_mask(self.keep, self.dtype)
        padded = self.pad(qkv).reshape(-1, 3 * H)  # (B * T, 3H), zeros at padding
        q, k, v = split_heads(padded, self.batch, num_heads)  # (B, N, T, D) each
        y = attend(q[:, :, :1], k, v, bias, dropout)  # (B, N, 1, D)
        return y.reshape(self.batch, H)

    def attention(self, qkv: Tensor, num_heads: int, dropout: float) -> Tensor:
        """(S, 3H) fused projections -> (S, H) attention output."""
        S, H = qkv.shape[0], qkv.shape[1] // 3
        N, D = num_heads, H // num_heads
        if self.indices is None:
            if self.record is not None:  # explicit math, to look at the probabilities (attention maps)
                q, k, v = split_heads(qkv, self.batch, num_heads)
                scores = q.float() @ k.float().transpose(-1, -2) * D**-0.5  # (B, N, T, T)
                probs = torch.softmax(scores if self.bias is None else scores + self.bias.float(), dim=-1)
                self.record.append(probs)
                return (probs.to(v.dtype) @ v).transpose(1, 2).reshape(S, H)
            return dense_attention(qkv, self.batch, num_heads, self.bias, dropout)
        if use_varlen_kernel(qkv.device):
            y = varlen_attention(qkv, self.offsets, max(self.lengths), N, dropout)
            if y is not None:
                return y
        # One call per sequence, no mask: on CPU this beats padding + masking (measured in bench/attention.py).
        outputs = []
        for part in torch.split(qkv, self.lengths):  # (L, 3H) per sequence
            outputs.append(dense_attention(part, 1, num_heads, None, dropout))  # (L, H)
        return torch.cat(outputs)  # (S, H)


def additive_mask(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, T) booleans (True: a real token) -> (B, 1, 1, T) additive attention mask in `dtype`. Additive (not
    boolean) so a fully padded row stays finite instead of NaN, as transformers does."""
    low = torch.finfo(dtype).min
    kind = keep.device.type
    if torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16:
        low = torch.finfo(torch.float16).min  # fp32's min would become -inf in fp16 (NaN on an all-pad row)
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, low)[:, None, None, :]


def split_heads(qkv: Tensor, batch: int, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B * T, 3H) fused projections of B unpacked sequences -> q, k, v, each (B, N, T, D): the one place the fused
    QKV layout (q | k | v, each head's D columns together) is read."""
    S, H = qkv.shape[0], qkv.shape[1] // 3
    return qkv.view(batch, S // batch, 3, num_heads, H // num_heads).permute(2, 0, 3, 1, 4).unbind(0)


def dense_attention(qkv: Tensor, batch: int, num_heads: int, bias: Tensor | None = None, dropout: float = 0.0
                    ) -> Tensor:
    """(B * T, 3H) fused projections of B unpacked sequences (additive `bias` masking padding, or None) ->
    (B * T, H) attention output, one `attend` call over (B, N, T, D)."""
    S, H = qkv.shape[0], qkv.shape[1] // 3
    return attend(*split_heads(qkv, batch, num_heads), bias, dropout).transpose(1, 2).reshape(S, H)


# The packed layout's attention: "kernel" = one var-len SDPA call over a nested jagged tensor (FlashAttention /
# memory-efficient var-len kernels on CUDA); "loop" = one SDPA call per sequence; "auto" = kernel on CUDA, loop on
# the CPU (where the loop was faster, bench/attention.py). BERTKIT_VARLEN sets it per process.
VARLEN = os.environ.get("BERTKIT_VARLEN", "auto")
_varlen_failed: str | None = None  # why the kernel was given up in this process (then the loop runs)


def use_varlen_kernel(device: torch.device) -> bool:
    if _varlen_failed is not None or VARLEN == "loop":
        return False
    return VARLEN == "kernel" or device.type == "cuda"


def varlen_attention(qkv: Tensor, offsets: Tensor, max_len: int, num_heads: int, dropout: float) -> Tensor | None:
    """(S, 3H) packed projections of sequences that start at `offsets` -> (S, H), in one SDPA call over nested
    jagged tensors (no padding, no mask); None, with a warning once per process, where the kernel is unavailable."""
    global _varlen_failed
    S, H = qkv.shape[0], qkv.shape[1] // 3
    D = H // num_heads

    def jagged(x: Tensor) -> Tensor:  # (S, N, D) -> (B, N, j, D)
        return torch.nested.nested_tensor_from_jagged(x.contiguous(), offsets, max_seqlen=max_len).transpose(1, 2)

    q, k, v = qkv.view(S, 3, num_heads, D).unbind(1)
    try:
        y = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), dropout_p=dropout)
    except (RuntimeError, NotImplementedError) as exc:
        _varlen_failed = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        warnings.warn(f"var-len attention kernel unavailable ({_varlen_failed[:200]}); attending one sequence at "
                      "a time", stacklevel=2)
        return None
    return y.transpose(1, 2).values().reshape(S, H)


class Embeddings(nn.Module):
    """Word + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, layout: Layout) -> Tensor:
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).expand(B, T)  # (B, T)
        ids, types, positions = layout.rows(input_ids), layout.rows(token_type_ids), layout.rows(positions)  # (S,)
        x = self.word(ids) + self.token_type(types) + self.position(positions)  # (S, H)
        x = self.norm(x)
        if torch.is_autocast_enabled(x.device.type):
            # Embeddings are not autocast, so without this the residual stream would stay fp32 and every linear
            # would cast its input (forward and backward). bf16 activations, fp32 master weights, as Megatron does.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return self.dropout(x)


ENCODER_LINEARS = ("qkv", "attn_out", "ffn_in", "ffn_out")  # an EncoderLayer's Linears, by attribute name


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
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, layout: Layout) -> Tensor:
        dropout = self.attn_dropout if self.training else 0.0
        y = layout.attention(self.qkv(x), self.num_heads, dropout)  # (S, 3H) -> (S, H)
        return self._after_attention(x, y)

    def forward_first(self, x: Tensor, layout: Layout) -> Tensor:
        """(S, H) -> (B, H): this layer's output at each sequence's first token only, the same numbers as
        `forward`'s rows there (keys and values still come from every token)."""
        dropout = self.attn_dropout if self.training else 0.0
        y = layout.first_token_attention(self.qkv(x), self.num_heads, dropout)  # (B, H)
        return self._after_attention(layout.first_tokens(x), y)

    def _after_attention(self, x: Tensor, y: Tensor) -> Tensor:
        """The attention output, residual and LayerNorm, then the feed-forward block, on rows `x` whose attention
        output is `y`."""
        x = self.attn_norm(x + self.dropout(self.attn_out(y)))  # (rows, H)
        h = self.ffn_out(self.act(self.ffn_in(x)))  # (rows, I) -> (rows, H)
        return self.ffn_norm(x + self.dropout(h))


class LayerStack(nn.ModuleList):
    """The encoder layers, run in order over one layout (`quantize(..., compile=True)` swaps in a subclass that runs
    an unpadded batch through them a few layers per compiled call).

    With `checkpointing` (training's `--gradient-checkpointing`), a layer keeps only its input for backward and
    runs again there to rebuild its activations: one layer's activations alive at a time instead of all L, for a
    second forward pass. torch's checkpoint puts the random state back for the rerun, so dropout draws the same
    masks and the gradients are those of the plain pass."""

    checkpointing = False

    def forward(self, x: Tensor, layout: Layout, first_only: bool = False) -> Tensor:
        """The layers over (S, H) rows; `first_only`: the last layer computes each sequence's first token only and
        `layout.first_only` says so (a stack may decline and return every row: then it stays False)."""
        rerun = self.checkpointing and self.training and torch.is_grad_enabled()
        last = len(self) - 1
        for i, layer in enumerate(self):
            if first_only and i == last and hasattr(layer, "forward_first"):
                x, layout.first_only = layer.forward_first(x, layout), True
            elif rerun:
                x = torch.utils.checkpoint.checkpoint(layer, x, layout, use_reentrant=False)
            else:
                x = layer(x, layout)
        return x


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation checkpointing of every encoder layer on (or off) in `model`, whatever head wraps the
    encoder; returns the number of encoder stacks found (0: `model` has none, nothing changed)."""
    stacks = [m for m in model.modules() if isinstance(m, LayerStack)]
    for stack in stacks:
        stack.checkpointing = enabled
    return len(stacks)


class BertModel(CheckpointIO, nn.Module):
    """The encoder: embeddings, L post-LN layers, and the tanh pooler over the [CLS] position."""

    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig, pooler: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = LayerStack(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        # transformers' BertForMaskedLM has no pooler (add_pooling_layer=False); neither does ours
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if pooler else None
        self.unpad = True  # False: compute on padding too (the reference path transformers takes)
        # `pooled` at inference runs the last layer on the [CLS] rows only (what the pooler reads); False: every row
        # (a reader of the layers' outputs, such as distillation's taps, turns it off)
        self.narrow_last_layer = True
        init_weights(self, config)

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
        record_attention: list[Tensor] | None = None, first_only: bool = False,
    ) -> tuple[Tensor, Layout]:
        """The encoder's output rows (S, H) and the layout that places them in the (B, T) batch. With a list as
        `record_attention`, each layer appends its (B, N, T, T) attention probabilities to it. `first_only`: the
        last layer may compute each sequence's first token only ((B, H) rows, `layout.first_only` then True)."""
        check_inputs(self.config, input_ids, attention_mask, token_type_ids)
        input_ids = input_ids.long()
        token_type_ids = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids.long()
        B, T = input_ids.shape
        layout = Layout(attention_mask, B, T, self.embeddings.word.weight.dtype,
                        unpad=self.unpad and record_attention is None)
        layout.record = record_attention
        # one thread for a packed batch while another process takes our cores (bertkit.threads)
        token = GOVERNOR.begin(layout.packed) if GOVERNOR.active(input_ids.device) and not self.training else None
        try:
            x = self.embeddings(input_ids, token_type_ids, layout)  # (S, H)
            x = self.layers(x, layout, first_only=first_only and record_attention is None)
        finally:
            GOVERNOR.end(token)
        return x, layout

    def resize_token_embeddings(self, size: int) -> None:
        """Grow the vocabulary to `size` rows (new tokens start at the mean embedding, as a neutral point)."""
        old = self.embeddings.word
        if size < old.num_embeddings:
            raise ValueError(f"cannot shrink the vocabulary from {old.num_embeddings} to {size}")
        if size == old.num_embeddings:
            return
        new = nn.Embedding(size, old.embedding_dim, padding_idx=old.padding_idx,
                           device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings :] = old.weight.mean(0)
        self.embeddings.word = new
        self.config.vocab_size = size

    def pool(self, x: Tensor, layout: Layout) -> Tensor:
        if self.pooler is None:
            raise ValueError("this encoder was built without a pooler (a masked-LM model)")
        return torch.tanh(self.pooler(layout.first_tokens(x)))  # (B, H)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> BertOutput:
        x, layout = self.encode(input_ids, attention_mask, token_type_ids)
        return BertOutput(layout.pad(x), self.pool(x, layout) if self.pooler is not None else x.new_zeros(0))

    def pooled(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
               ) -> Tensor:
        """(B, H) pooler output alone: `forward(...).pooler_output`, where at inference (and with
        `narrow_last_layer`) the last layer computes the [CLS] rows only, which are all the pooler reads."""
        first_only = self.narrow_last_layer and not self.training
        x, layout = self.encode(input_ids, attention_mask, token_type_ids, first_only=first_only)
        return self.pool(x, layout)

    @torch.no_grad()
    def attention_maps(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                       token_type_ids: Tensor | None = None) -> Tensor:
        """(L, B, N, T, T) attention probabilities of every layer and head (what the web page draws)."""
        maps: list[Tensor] = []
        self.encode(input_ids, attention_mask, token_type_ids, record_attention=maps)
        return torch.stack(maps)


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
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        mlm_positions: Tensor | None = None,
    ) -> PreTrainingOutput:
        """With `mlm_positions` (a (B, T) bool mask, e.g. `labels != -100`), the vocabulary projection runs only
        there and `mlm_logits` is (M, V) in row-major order of the mask; otherwise (B, T, V)."""
        x, layout = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (S, H)
        if mlm_positions is None:
            mlm_logits = layout.pad(self.mlm_logits(x))  # (B, T, V)
        else:
            if mlm_positions.shape != input_ids.shape or mlm_positions.dtype != torch.bool:
                raise ValueError(f"mlm_positions must be a bool tensor of shape {tuple(input_ids.shape)}, got "
                                 f"{mlm_positions.dtype} {tuple(mlm_positions.shape)}")
            selected = layout.rows(mlm_positions)  # (S,) bool
            if int(selected.sum()) != int(mlm_positions.sum()):
                raise ValueError("mlm_positions selects padding positions (attention_mask == 0)")
            mlm_logits = self.mlm_logits(x[selected])  # (M, V)
        pooled = self.bert.pool(x, layout)
        return PreTrainingOutput(mlm_logits, self.nsp(pooled), layout.pad(x), pooled)


class BertForMaskedLM(CheckpointIO, nn.Module):
    """BERT with the MLM head only (transformers' BertForMaskedLM: no pooler, no NSP head), for fill-mask."""

    hf_architecture = "BertForMaskedLM"
    hf_head_renames = BertForPreTraining.hf_head_renames[:3]

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, pooler=False)
        H = config.hidden_size
        self.mlm_transform = nn.Linear(H, H)
        self.mlm_act = _ACTIVATIONS[config.hidden_act]
        self.mlm_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_weights(self, config)

    mlm_logits = BertForPreTraining.mlm_logits

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                mlm_positions: Tensor | None = None) -> Tensor:
        """Vocabulary logits: (B, T, V), or (M, V) at the `mlm_positions` (a (B, T) bool mask) only."""
        x, layout = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (S, H)
        if mlm_positions is None:
            return layout.pad(self.mlm_logits(x))  # (B, T, V)
        return self.mlm_logits(x[layout.rows(mlm_positions)])  # (M, V)


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
