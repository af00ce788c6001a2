"""Inference precision: fp32, bf16 and int8 on the CPU, and what `--precision auto` picks.

    policy.py     choose_precision / resolve_precision / plan_inference (AUTO_TABLE), quantize(model, precision),
                  prepare_for_inference
    state.py      STATE: what the process decided once (packed GEMMs, compiled functions, compile failures)
    int8_ops.py   int8 as pure functions: one rounding grid, the int8 GEMM, the encoder's blocks
    int8.py       Int8Linear, Int8EncoderLayer, Int8LayerStack, FrozenInt8Layers
    bf16.py       Bf16Linear, pack_bf16

`bertkit.quantize` is `quantize` here.
"""

from bertkit.precision.policy import (
    AUTO_TABLE,
    PRECISIONS,
    Plan,
    choose_precision,
    plan_inference,
    prepare_for_inference,
    quantize,
    resolve_precision,
)

__all__ = ["AUTO_TABLE", "PRECISIONS", "Plan", "choose_precision", "plan_inference", "prepare_for_inference",
           "quantize", "resolve_precision"]
