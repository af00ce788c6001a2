"""`bertkit info`: a checkpoint directory described line by line (weights, shape, vocabulary, task and where it
comes from, whether every tensor is finite, what `auto` runs here for each batch shape)."""

from __future__ import annotations

from pathlib import Path

from bertkit.checkpoint import check_directory, check_vocab_fits, nonfinite_tensors, read_weights
from bertkit.config import BertConfig
from bertkit.tasks.derived import describe_task
from bertkit.tokenizer import TOKENIZER_JSON_NAME, VOCAB_NAME, read_vocabulary


def describe_checkpoint(checkpoint: str | Path) -> tuple[list[str], bool]:
    """The lines `bertkit info` prints, and whether the weights are all finite (a checkpoint holding NaN or infinite
    values is described, not refused: info is how one inspects a broken checkpoint)."""
    directory = Path(checkpoint)
    check_directory(directory)
    config = BertConfig.from_pretrained(directory)
    check_vocab_fits(directory, config)
    state, source = read_weights(directory)
    bad = nonfinite_tensors(state)
    lines = [f"checkpoint   {directory}",
             f"weights      {source} ({sum(t.numel() for t in state.values()):,} values in {len(state)} tensors)",
             f"architecture {', '.join(config.architectures)}",
             f"shape        L={config.num_hidden_layers} H={config.hidden_size} A={config.num_attention_heads} "
             f"I={config.intermediate_size} V={config.vocab_size} max_len={config.max_position_embeddings}"]
    if any((directory / name).is_file() for name in (VOCAB_NAME, TOKENIZER_JSON_NAME)):
        vocab, options, vocab_source = read_vocabulary(directory)
        added = f", {len(options.added_tokens)} of them added tokens" if options.added_tokens else ""
        lines.append(f"vocabulary   {len(vocab)} tokens ({vocab_source.name}{added})")
    lines.append(f"task         {describe_task(directory, config)}")
    if bad:
        lines.append(f"finite       NO: {len(bad)} tensor(s) hold NaN or infinite values: {', '.join(bad[:8])}"
                     f"{' ...' if len(bad) > 8 else ''}")
        return lines, False
    lines.append("finite       yes")
    from bertkit.device import describe, resolve_device
    from bertkit.precision import plan_inference

    device = resolve_device("auto")
    served, once = plan_inference("auto", device, compile=None), plan_inference("auto", device)
    lines.append(f"here         --device auto: {describe(device)}; --precision auto: {served.precision}"
                 f"{' compiled' if served.compile else ''} in `bertkit serve` ({served.why})")
    lines += served.shape_lines(indent="  ")
    if once != served:
        lines.append(f"  one-shot commands      {once.precision} without --compile (predict, evaluate, embed, index, "
                     "search: a compilation costs more than it saves on a few inputs)")
    return lines, True
