"""The command line's value parsers: each option's text to a checked value, or a
one-line `argparse` error that names what was expected and what came."""

import argparse
import math
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(text: str, what: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return integer(text, "a positive integer", 1)


def seed(text: str) -> int:
    return integer(text, "an integer seed in [0, 2**63)", 0, 2**63)


def budget(text: str) -> int:
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps, got {text!r}") from None
    if not math.isfinite(number) or number >= 2**62:
        raise argparse.ArgumentTypeError(f"expected a finite number of steps, got {text!r}")
    if number < 0:
        raise argparse.ArgumentTypeError(f"the budget must not be negative, got {int(number)}")
    return int(number)


def seed_list(text: str) -> tuple[int, ...]:
    seeds = tuple(seed(part) for part in text.split(","))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def float_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def float_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float_value(text)


def indices(text: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated indices like 1,3, got {text!r}"
        ) from None


SPECIAL: dict[str, Any] = {"ppo.total_steps": budget, "seed": seed}
BY_TYPE: dict[Any, Any] = {
    int: positive_int,
    int | None: positive_int,
    float: float_value,
    float | None: float_or_none,
    tuple[int, ...]: indices,
    str: str,
}
