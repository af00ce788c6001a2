"""bertkit: BERT end to end — vocabulary, pre-training, fine-tuning, evaluation and serving."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bertkit.errors import BertkitError, CheckpointError, DataError

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `import bertkit.prepare` in a tokenizing worker does not load torch (2 s)
_LAZY = {"BertConfig": "bertkit.config", "BertForMaskedLM": "bertkit.model", "BertForPreTraining": "bertkit.model",
         "BertModel": "bertkit.model",
         "BertOutput": "bertkit.model", "PreTrainingOutput": "bertkit.model", "Tokenizer": "bertkit.tokenizer",
         "quantize": "bertkit.precision"}

if TYPE_CHECKING:
    from bertkit.config import BertConfig
    from bertkit.model import BertForMaskedLM, BertForPreTraining, BertModel, BertOutput, PreTrainingOutput
    from bertkit.precision import quantize
    from bertkit.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bertkit' has no attribute {name!r}")


__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertModel",
    "BertOutput",
    "BertkitError",
    "CheckpointError",
    "DataError",
    "PreTrainingOutput",
    "Tokenizer",
    "__version__",
    "quantize",
]
