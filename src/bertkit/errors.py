"""The exceptions bertkit raises for bad input, each carrying a message that says what is wrong and where."""

from __future__ import annotations


class BertkitError(Exception):
    """Base class: an error a user can fix, reported without a traceback by the CLI."""


class CheckpointError(BertkitError, ValueError):
    """A checkpoint directory, config, vocabulary or weight file is missing, unreadable or inconsistent."""


class DataError(BertkitError, ValueError):
    """An input file or record is malformed; the message names the file, the line and what was expected."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        where = f"{path}:{line}: " if path is not None and line is not None else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class DeviceError(BertkitError, ValueError):
    """A device that does not exist here (no CUDA, an index past the last GPU, a name bertkit does not run on)."""


class TrainingError(BertkitError):
    """Training cannot go on (repeated non-finite losses, a checkpoint that does not fit the run, a run directory in
    use or not writable)."""


def reason(exc: BaseException) -> str:
    """What a reader's exception says, in words: a KeyError's message is only the key ('question'), so it becomes
    "missing field 'question'"; an IndexError or TypeError names its kind."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "a missing field"
    if isinstance(exc, IndexError | TypeError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)
