"""The sequence kernel of the working tree against the same kernel at a git revision, in
one process.

    python -m benchmarks.against REV [--shape 128x256] [--rounds 15]

On a shared host the absolute figures of `benchmarks.run` move with the host's load and
clock (the 2048x2048 `jnp.dot` has read from 240 to 490 GFLOP/s on the same machine);
two kernels timed in the same interleaved rounds see the same host, so their ratio is
what a change to the kernel did. `REV`'s package is extracted with `git archive` into a
temporary directory and imported under another name; both models are built from the same
key, and the run checks that they compute the same loss before it times anything.
Prints one line per function and the ratios, with flax nnx as the peer of
`benchmarks.run` beside them.
"""

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from . import peers as P
from .run import matmul_peak
from .timing import calibrate, rounds


ROOT = Path(__file__).resolve().parent.parent
OLD = "eqx_lstm_ac_at_rev"


def package_at(rev: str, into: Path):
    """Import the package as it is at `rev`, as module `OLD`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "eqx_lstm_ac"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "eqx_lstm_ac").rename(into / OLD)
    for path in (into / OLD).glob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bimport eqx_lstm_ac as\b", f"import {OLD} as", text))
    sys.path.insert(0, str(into))
    return importlib.import_module(OLD)


def loss_functions(lac, xs, actions, returns):
    """`(forward, forward + backward)` of `lac`'s model, each called without arguments."""
    model, _ = eqx.nn.make_with_state(lac.LSTMActorCritic)(
        observation_space_size=P.OBS,
        action_space_size=P.ACTIONS,
        hidden_features=P.HIDDEN,
        lstm_features=P.LSTM,
        key=jax.random.key(0),
    )
    model = eqx.tree_at(
        lambda m: m.actor_sigma.log_std, model, jnp.linspace(-0.5, 0.5, P.ACTIONS)
    )
    params, static = eqx.partition(model, eqx.is_array)
    fwd = jax.jit(lambda p, xs: P.ours_forward(eqx.combine(p, static), xs))
    grad = jax.jit(
        jax.value_and_grad(lambda p, xs, a, r: P.ours_loss(eqx.combine(p, static), xs, a, r))
    )
    return (lambda: fwd(params, xs)), (lambda: grad(params, xs, actions, returns)), model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="a git revision, e.g. HEAD~3 or a commit hash")
    parser.add_argument("--shape", default="128x256", help="T x B (default 128x256)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    t_len, batch = (int(n) for n in args.shape.lower().split("x"))

    import eqx_lstm_ac as new

    with tempfile.TemporaryDirectory() as tmp:
        old = package_at(args.rev, Path(tmp))
        k = jax.random.split(jax.random.key(1), 3)
        xs = jax.random.normal(k[0], (t_len, batch, P.OBS))
        actions = jax.random.normal(k[1], (t_len, batch, P.ACTIONS))
        returns = jax.random.normal(k[2], (t_len, batch))
        fns = {}
        losses = {}
        for name, lac in ((args.rev, old), ("tree", new)):
            fwd, grad, model = loss_functions(lac, xs, actions, returns)
            fns[f"{name} fwd"], fns[f"{name} fwd+bwd"] = fwd, grad
            losses[name] = float(grad()[0])
        if abs(losses[args.rev] - losses["tree"]) > 1e-5 * abs(losses["tree"]):
            raise SystemExit(f"The two kernels compute different losses: {losses}.")
        graphdef, f_params = P.flax_from_ours(model)  # pyright: ignore[reportPossiblyUnboundVariable]
        _, f_loss, _ = P.flax_functions(graphdef)
        f_grad = jax.jit(jax.value_and_grad(f_loss))
        fns["flax fwd+bwd"] = lambda: f_grad(f_params, xs, actions, returns)

        peak_before = matmul_peak()
        numbers = {name: calibrate(fn, 0.3) for name, fn in fns.items()}
        samples: dict[str, list[float]] = {}
        for r in range(args.rounds):
            rounds(fns, numbers, samples, r)
        peak_after = matmul_peak()

    med = {name: statistics.median(v) for name, v in samples.items()}
    print(f"T={t_len} B={batch}, matmul peak {peak_before:.0f} -> {peak_after:.0f} GFLOP/s")
    for name, t in med.items():
        print(f"  {name:>24}: {t * 1e3:8.2f} ms (min {min(samples[name]) * 1e3:.2f})")
    for mode in ("fwd", "fwd+bwd"):
        ratio = med[f"{args.rev} {mode}"] / med[f"tree {mode}"]
        print(f"  {mode}: the tree is {ratio:.3f}x the speed of {args.rev}")
    print(f"  fwd+bwd: flax / tree = {med['flax fwd+bwd'] / med['tree fwd+bwd']:.2f}x")


if __name__ == "__main__":
    main()
