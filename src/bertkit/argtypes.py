"""argparse types for numbers: a value out of range is refused while the command line is parsed (exit 2, the flag
named, the expected range said), before any work and never as a traceback later."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


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
