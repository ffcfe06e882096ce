"""argparse types shared by the commands (standard library only: the hook imports this)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse `type` for a number of seconds within [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low:g}-{high:g} seconds, got {value:g}")
        return value

    return parse
