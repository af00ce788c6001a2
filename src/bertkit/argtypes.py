"""argparse helpers: number types that refuse a value out of range while the command line is parsed (exit 2, the flag
named, the expected range said), and flags built from the fields of an options dataclass."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

from bertkit.config import SIZE_LIMITS
from bertkit.errors import BertkitError


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""
    words = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value

    return parse


def float_range(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
                ) -> Callable[[str], float]:
    """An argparse type: a finite number between low and high (each bound inclusive unless `*_open`)."""
    words = f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        words += f" and {'<' if high_open else '<='} {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        inside = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            inside = inside and (value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value

    return parse


POSITIVE = int_range(1)
# [CLS] + [SEP] + at least a few tokens; the top is the largest max_position_embeddings bertkit builds.
SEQ_LEN = int_range(8, SIZE_LIMITS["max_position_embeddings"])
# The 5 special tokens plus at least one more; the top is BertConfig's vocab_size limit.
VOCAB_SIZE = int_range(6, SIZE_LIMITS["vocab_size"])
LEARNING_RATE = float_range(0.0, 1.0, low_open=True)


# ---- flags from an options dataclass: each field with a help text in its metadata is one `--flag` -------------------

def flag(help: str, default: Any = None, *, choices: Sequence[str] | None = None,
         type: Callable[[str], Any] | None = None, name: str | None = None, nargs: str | None = None,
         metavar: str | None = None, default_factory: Callable[[], Any] | None = None,
         negation: str | None = None) -> Any:
    """A field of an options dataclass that is also a command-line flag (`add_dataclass_flags`): `help` says what
    it does (the default is added to it); a bool field is a switch (`--name`, or `--no-name` where the default is
    True); `negation`, the help of a `--no-name` beside `--name` (a bool field whose default None means "decide at
    run time"); `name` replaces the flag's name (the field's, with '-' for '_'); `choices`, `type`, `nargs` and
    `metavar` are argparse's."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "type": type, "flag": name,
                "nargs": nargs, "metavar": metavar, "negation": negation}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_fields(cls: type) -> list[Field[Any]]:
    """The fields of an options dataclass that are flags (those with a help text)."""
    return [f for f in fields(cls) if f.metadata.get("help")]


def _default(f: Field[Any], defaults: Any = None) -> Any:
    if defaults is not None:
        return getattr(defaults, f.name)
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _flag_name(f: Field[Any], default: Any) -> str:
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    return "--" + ("no-" if default is True else "") + f.name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, *classes: type, owners: Sequence[str] = (),
                        defaults: Any = None) -> None:
    """One `--flag` for each flag field of the options dataclasses `classes` (`flag()` fields: help, choices and
    type from its metadata), its value stored under the field's name for `options_from_args`.

    With `owners` (one name per class, e.g. the tasks whose options these are), a field that several classes share
    is one flag: its help names the owners that take it (one help for all where they say the same, else each
    owner's own), and its choices are every owner's (`options_from_args` checks the owner's own); the flag's
    default is None (the class's default applies), so a caller can tell which flags were given. With `defaults` (an
    instance of the one class), its values are the flags' defaults instead of the class's (a command that trains
    with its own learning rate, say)."""
    if defaults is not None and (owners or len(classes) != 1 or not isinstance(defaults, classes[0])):
        raise ValueError("defaults is an instance of the one class given, without owners")
    shared: dict[str, list[tuple[str, Field[Any]]]] = {}
    for index, cls in enumerate(classes):
        for f in flag_fields(cls):
            shared.setdefault(f.name, []).append((owners[index] if owners else "", f))
    for name, found in shared.items():
        first = found[0][1]
        default = _default(first, defaults)
        helps = {f.metadata["help"] for _, f in found}
        if len(helps) > 1 and not owners:
            raise ValueError(f"the flag of {name!r} has different help texts: {helps}")
        owner_defaults = {owner: _default(f, defaults) for owner, f in found}
        negation = first.metadata.get("negation")
        switch = isinstance(default, bool) or negation is not None
        quiet = switch or default in (None, [])  # a switch, or an option that is off unless given
        kwargs: dict[str, Any] = {"dest": name}
        if owners:
            same = len({repr(value) for value in owner_defaults.values()}) == 1
            shown = str(default) if same else ", ".join(f"{owner} {value}" for owner, value in owner_defaults.items())
            said = (f"{', '.join(owner_defaults)}: {first.metadata['help']}" if len(helps) == 1 else
                    "; ".join(f"{owner}: {f.metadata['help']}" for owner, f in found))
            kwargs["help"] = f"{said}{'' if quiet else f' (default: {shown})'}"
            kwargs["default"] = None  # the class's default applies; None tells a caller the flag was not given
        else:
            kwargs["help"] = first.metadata["help"] + ("" if quiet else " (default: %(default)s)")
            kwargs["default"] = default
        if negation is not None:  # --name and --no-name, the default (None: decided at run time) when neither
            parser.add_argument("--" + name.replace("_", "-"), action="store_true", **kwargs)
            parser.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_false", help=negation)
            continue
        if switch:
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            for key in ("type", "nargs", "metavar"):
                if first.metadata.get(key) is not None:
                    kwargs[key] = first.metadata[key]
            # every owner's choices (heads differ by task); options_from_args checks the owner's own
            choices = list(dict.fromkeys(c for _, f in found for c in f.metadata.get("choices") or ()))
            if choices:
                kwargs["choices"] = choices
        parser.add_argument(_flag_name(first, default), **kwargs)


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """An instance of the options dataclass `cls` from parsed flags (`add_dataclass_flags`): a flag left at None
    keeps the class's default; a value outside the field's own choices (a flag several classes share) is an
    error."""
    values = {f.name: getattr(args, f.name) for f in flag_fields(cls)
              if getattr(args, f.name, None) is not None}
    for f in flag_fields(cls):
        choices = f.metadata.get("choices")
        if f.name in values and choices and values[f.name] not in choices:  # a shared flag's other owner's choice
            raise BertkitError(f"{_flag_name(f, _default(f))} {values[f.name]}: choose one of "
                               f"{', '.join(choices)} here")
    return cls(**values)
