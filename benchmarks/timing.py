"""Timing helpers: interleaved repetitions, medians, `block_until_ready`."""

import statistics
import time
from collections.abc import Callable

import jax


def block(out):
    """Wait for every array in `out` (JAX arrays; torch tensors are synchronous)."""
    for leaf in jax.tree.leaves(out):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


def time_call(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of `fn`, over `number` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        out = fn()
    block(out)  # pyright: ignore[reportPossiblyUnboundVariable]
    return (time.perf_counter() - start) / number


def calibrate(fn: Callable[[], object], target_s: float) -> int:
    """How many calls of `fn` take about `target_s` seconds (at least one)."""
    block(fn())
    once = time_call(fn, 1)
    if once >= target_s:
        return 1
    n = max(1, int(target_s / max(once, 1e-7)))
    per = time_call(fn, n)
    return max(1, int(target_s / max(per, 1e-7)))


def rounds(
    fns: dict[str, Callable[[], object]],
    numbers: dict[str, int],
    samples: dict[str, list[float]],
    r: int,
) -> None:
    """One interleaved round: each function timed once over `numbers[name]` calls, its
    seconds per call appended to `samples[name]`. The order rotates with `r`, so that
    no function always runs right after the same other one."""
    names = list(fns)
    for name in names[r % len(names) :] + names[: r % len(names)]:
        samples.setdefault(name, []).append(time_call(fns[name], numbers[name]))


def compare(
    fns: dict[str, Callable[[], object]], repeats: int, target_s: float
) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds (so a
    burst of load from other processes hits all of them alike)."""
    numbers = {name: calibrate(fn, target_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {}
    for r in range(repeats):
        rounds(fns, numbers, samples, r)
    return {name: statistics.median(s) for name, s in samples.items()}
