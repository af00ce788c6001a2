"""bertkit: BERT end to end — vocabulary, pre-training, fine-tuning, evaluation and serving."""

from bertkit.config import BertConfig
from bertkit.errors import BertkitError, CheckpointError, DataError
from bertkit.model import BertForPreTraining, BertModel, BertOutput, PreTrainingOutput
from bertkit.tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertForPreTraining",
    "BertModel",
    "BertOutput",
    "BertkitError",
    "CheckpointError",
    "DataError",
    "PreTrainingOutput",
    "Tokenizer",
    "__version__",
]
