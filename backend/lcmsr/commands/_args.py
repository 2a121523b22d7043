"""Argument types shared by the sub-commands, so `--bands` means and says the same everywhere."""
from __future__ import annotations

import argparse


def bands(text: str) -> list[int]:
    """'3,2,1' -> [3, 2, 1]: 1-based band numbers, in the order the model or metric takes them."""
    message = f"--bands takes 1-based band numbers like 3,2,1, got '{text}'"
    try:
        values = [int(b) for b in text.replace(" ", "").split(",") if b]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(message)
    return values


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value
