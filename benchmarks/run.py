"""The benchmark suite: `eqx_lstm_ac` against flax nnx and PyTorch, in one process.

    python -m benchmarks.run [--quick] [--out benchmarks/results/cpu.json]

Every figure is a median over interleaved repetitions after warm-up, with
`block_until_ready`; what matters is the ratios, measured side by side. Writes a JSON
file that `python -m benchmarks.report` turns into `docs/benchmarks.md`.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_lstm_ac as lac

from . import peers as P
from .timing import block, calibrate, compare, rounds


CORES = os.cpu_count() or 1


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- the machine


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of one large `jnp.dot` (the machine's own limit)."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    dot = jax.jit(jnp.dot)
    t = compare({"dot": lambda: dot(a, b)}, repeats, 0.3)["dot"]
    return 2.0 * n**3 / t / 1e9


# ---------------------------------------------------------------------- torch


def torch_setup():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(CORES)
    return torch


def torch_threads(torch, n):
    """Wrap a torch benchmark so that it runs with `n` intra-op threads."""

    def wrap(fn):
        def run():
            torch.set_num_threads(n)
            return fn()

        return run

    return wrap


def keep_faster_torch(fns: dict, label: str) -> dict:
    """Keep one torch entry, `torch`: the faster of `CORES` threads and one thread.

    On a loaded machine OpenMP's thread barriers can make the multi-threaded run many
    times slower than one thread; timing both in full would take minutes for nothing.
    The choice is made from one warm call of each and logged."""
    if "torch_1t" not in fns:
        return fns
    once = {}
    for name in ("torch", "torch_1t"):
        block(fns[name]())
        start = time.perf_counter()
        block(fns[name]())
        once[name] = time.perf_counter() - start
    slower = max(once, key=lambda k: once[k])
    log(
        f"  {label}: torch threads={CORES} {once['torch'] * 1e3:.2f} ms, threads=1 "
        f"{once['torch_1t'] * 1e3:.2f} ms -> using threads={1 if slower == 'torch' else CORES}"
    )
    fns = dict(fns)
    one_thread = fns.pop("torch_1t")
    if slower == "torch":
        fns["torch"] = one_thread
    return fns


# ---------------------------------------------------------------------- sequence mode


def sequence_fns(t_len, batch, torch):
    """The functions timed at one `(T, B)`: `{"fwd": {peer: fn}, "fwd_bwd": {peer: fn}}`,
    each called without arguments, with PyTorch at its faster thread count."""
    model = P.make_ours()
    k = jax.random.split(jax.random.key(1), 3)
    xs = jax.random.normal(k[0], (t_len, batch, P.OBS))
    actions = jax.random.normal(k[1], (t_len, batch, P.ACTIONS))
    returns = jax.random.normal(k[2], (t_len, batch))

    # As a training step calls it: one `jax.jit` of the model's arrays (the flax peer is
    # called the same way). The `eqx.filter_jit` entry adds Equinox's per-call cost of
    # flattening and splitting the model.
    params, static = eqx.partition(model, eqx.is_array)
    ours_fwd = jax.jit(lambda p, xs: P.ours_forward(eqx.combine(p, static), xs))
    ours_grad = jax.jit(
        jax.value_and_grad(lambda p, xs, a, r: P.ours_loss(eqx.combine(p, static), xs, a, r))
    )
    filter_fwd = eqx.filter_jit(P.ours_forward)
    filter_grad = eqx.filter_jit(eqx.filter_value_and_grad(P.ours_loss))
    graphdef, f_params = P.flax_from_ours(model)
    f_fwd, f_loss, _ = P.flax_functions(graphdef)
    flax_fwd = jax.jit(f_fwd)
    flax_grad = jax.jit(jax.value_and_grad(f_loss))

    fwd = {
        "ours": lambda: ours_fwd(params, xs),
        "ours_filter_jit": lambda: filter_fwd(model, xs),
        "flax": lambda: flax_fwd(f_params, xs),
    }
    grad = {
        "ours": lambda: ours_grad(params, xs, actions, returns),
        "ours_filter_jit": lambda: filter_grad(model, xs, actions, returns),
        "flax": lambda: flax_grad(f_params, xs, actions, returns),
    }
    if torch is not None:
        tm = P.torch_from_ours(model)
        txs, tact, tret = (torch.from_numpy(np.asarray(a)) for a in (xs, actions, returns))

        def t_fwd():
            with torch.no_grad():
                return tm.sequence(txs)[:2]

        def t_grad():
            tm.zero_grad(set_to_none=True)
            loss = tm.loss(txs, tact, tret)
            loss.backward()
            return loss

        for name, n in (("torch", CORES), ("torch_1t", 1)):
            if name == "torch_1t" and CORES == 1:
                continue
            fwd[name] = torch_threads(torch, n)(t_fwd)
            grad[name] = torch_threads(torch, n)(t_grad)
    return {
        mode: keep_faster_torch(fns, f"T={t_len} B={batch} {mode}")
        for mode, fns in (("fwd", fwd), ("fwd_bwd", grad))
    }


def bench_sequences(grid, repeats, target_s, torch):
    """Median seconds per call of every peer at every `(T, B)` of `grid`, forward and
    forward + backward.

    The rounds are spread over the whole grid: round `r` of every shape runs before
    round `r + 1` of any. This host has slow phases of 5-10 seconds in which a program
    of many small steps runs up to 1.6x slower; measured one shape at a time, a shape
    could fall entirely inside one. Spread this way, every shape's samples span the
    whole run."""
    setups = [((t_len, batch), sequence_fns(t_len, batch, torch)) for t_len, batch in grid]
    cases = [(shape, mode, fns) for shape, modes in setups for mode, fns in modes.items()]
    numbers = [{name: calibrate(fn, target_s) for name, fn in fns.items()} for *_, fns in cases]
    samples: list[dict[str, list[float]]] = [{} for _ in cases]
    for r in range(repeats):
        for (_, _, fns), n, s in zip(cases, numbers, samples, strict=True):
            rounds(fns, n, s, r)
    if torch is not None:
        torch.set_num_threads(CORES)
    out: dict[tuple[int, int], dict] = {}
    for ((t_len, batch), mode, _), s in zip(cases, samples, strict=True):
        times = {name: statistics.median(v) for name, v in s.items()}
        out.setdefault((t_len, batch), {})[mode] = times
        log(
            f"  T={t_len} B={batch} {mode}: "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items())
        )
    return out


# ---------------------------------------------------------------------- single steps


def bench_step(batch, repeats, target_s, torch):
    model = P.make_ours()
    x = jax.random.normal(jax.random.key(0), (batch, P.OBS))
    key = jax.random.key(1)
    box = {"state": model.init_state((batch,)), "actor": model.init_state((batch,))}
    actor = lac.Actor(model)

    def ours():
        out, box["actor"] = actor(x, box["actor"], key=key)
        return out

    def ours_act():
        out, box["state"] = model.act(x, box["state"], key=key)
        return out

    graphdef, params = P.flax_from_ours(model)
    _, _, f_step = P.flax_functions(graphdef)

    @jax.jit
    def flax_act(params, x, carry, key):
        mu, value, carry = f_step(params, x, carry)
        std = jnp.exp(model.actor_sigma.log_std)  # type: ignore[union-attr]
        action = mu + std[None] * jax.random.normal(key, mu.shape)
        log_prob, _ = P.gaussian_terms(mu, jnp.log(std), action)
        return (action, log_prob, value[:, 0]), carry

    z = jnp.zeros((batch, P.LSTM))
    box["flax"] = (z, z)

    def flax():
        out, box["flax"] = flax_act(params, x, box["flax"], key)
        return out

    fns = {"ours": ours, "ours_act": ours_act, "flax": flax}
    if torch is not None:
        tm = P.torch_from_ours(model)
        tx = torch.from_numpy(np.asarray(x))
        zeros = torch.zeros(1, batch, P.LSTM)
        box["torch"] = (zeros, zeros)

        def t_step():
            with torch.inference_mode():
                out, box["torch"] = tm.act(tx, box["torch"])
            return out

        fns["torch"] = torch_threads(torch, CORES)(t_step)
        if CORES > 1:
            fns["torch_1t"] = torch_threads(torch, 1)(t_step)
    fns = keep_faster_torch(fns, f"step B={batch}")
    times = compare(fns, repeats, target_s)
    log(f"  step B={batch}: " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in times.items()))
    if torch is not None:
        torch.set_num_threads(CORES)
    return times


# ---------------------------------------------------------------------- fused rollout


class _CheapEnv(lac.Environment):
    """A cheap JAX environment: the next observation is a fixed map of the action, and
    an episode lasts 64 steps."""

    @property
    def observation_size(self) -> int:
        return P.OBS

    @property
    def action_size(self) -> int:
        return P.ACTIONS

    @property
    def discrete(self) -> bool:
        return False

    def reset(self, key, params):
        del key, params
        return jnp.zeros((P.OBS,), jnp.float32), jnp.zeros((), jnp.int32)

    def step(self, key, env_state, action, params):
        del key, params
        t = env_state + 1
        reps = -(-P.OBS // P.ACTIONS)
        obs = jnp.tanh(jnp.tile(action, reps)[: P.OBS] + 0.01 * t.astype(jnp.float32))
        return obs, t, jnp.sum(action * action), (t % 64) == 0, jnp.zeros((), bool), {}


def bench_rollout(batch, steps, repeats, target_s):
    model = P.make_ours()
    env = _CheapEnv()
    rs0 = lac.start_rollout(model, env, batch, key=jax.random.key(0))
    key = jax.random.key(1)
    vstep = jax.vmap(env.step, in_axes=(None, 0, 0, None))

    def fused():
        return lac.rollout(model, env, rs0, steps, key=key)

    @eqx.filter_jit
    def one_step(model, state, env_state, obs, start, key):
        state = model.reset(state, obs.shape, mask=start)
        (action, log_prob, value), state = model.act(obs, state, key=key)
        obs, env_state, reward, done, _, _ = vstep(key, env_state, action, None)
        reset_obs, reset_state = env.reset(key, None)
        env_state = jnp.where(done, reset_state, env_state)
        obs = jnp.where(done[:, None], reset_obs[None], obs)
        return (action, log_prob, value, reward), (state, env_state, obs, done)

    keys = jax.random.split(key, steps)

    def loop():
        state, env_state, obs, start = rs0.model_state, rs0.env_state, rs0.obs, rs0.episode_start
        outs = []
        for k in keys:
            out, (state, env_state, obs, start) = one_step(model, state, env_state, obs, start, k)
            outs.append(out)
        return outs

    times = compare({"fused": fused, "loop": loop}, repeats, target_s)
    per_step = {k: v / steps for k, v in times.items()}
    log(
        f"  rollout B={batch}: "
        + ", ".join(f"{k} {v * 1e6:.1f} us/step" for k, v in per_step.items())
    )
    return per_step


# ---------------------------------------------------------------------- compile and memory


def bench_compile(t_len, batch, repeats):
    k = jax.random.split(jax.random.key(1), 3)
    xs = jax.random.normal(k[0], (t_len, batch, P.OBS))
    actions = jax.random.normal(k[1], (t_len, batch, P.ACTIONS))
    returns = jax.random.normal(k[2], (t_len, batch))
    out = {}

    def ours_fn(remat):
        model = P.make_ours(remat=remat)
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(params, xs, actions, returns):
            return P.ours_loss(eqx.combine(params, static), xs, actions, returns)

        return jax.value_and_grad(loss), params

    def flax_fn(remat):
        graphdef, params = P.flax_from_ours(P.make_ours())
        return jax.value_and_grad(P.flax_functions(graphdef)[1]), params

    cases = {"ours": (ours_fn, False), "ours_remat": (ours_fn, True), "flax": (flax_fn, False)}
    samples = {name: [] for name in cases}
    memory = {}
    calls = {}
    for _ in range(repeats):
        for name, (make, remat) in cases.items():
            fn, params = make(remat)
            jax.clear_caches()
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(params, xs, actions, returns).compile()
            samples[name].append(time.perf_counter() - start)
            mem = compiled.memory_analysis()
            memory[name] = None if mem is None else int(mem.temp_size_in_bytes)
            block(compiled(params, xs, actions, returns))
            calls[name] = functools.partial(compiled, params, xs, actions, returns)
    # the same three programs run, interleaved: what `remat` costs in time
    run_s = compare(calls, max(3, 3 * repeats), 0.1)
    for name in cases:
        out[name] = {
            "compile_s": statistics.median(samples[name]),
            "temp_bytes": memory[name],
            "run_s": run_s[name],
        }
    log(f"  compile T={t_len} B={batch}: {out}")
    return out


# ---------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid, few repeats")
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument("--sequence-only", action="store_true", help="only the sequence-mode grid")
    args = parser.parse_args(argv)

    if args.quick:
        grid = [(32, 16), (32, 256)]
        steps_b, rollout_b = [1, 64], [1]
        repeats, target_s, compile_shape, compile_repeats = 3, 0.1, (32, 16), 1
    else:
        grid = [(t, b) for t in (32, 128) for b in (16, 256, 1024)]
        steps_b, rollout_b = [1, 64, 1024], [1, 64]
        # Many short rounds, spread over the grid (see `bench_sequences`).
        repeats, target_s, compile_shape, compile_repeats = 15, 0.1, (128, 256), 5
    out_path = args.out or os.path.join(
        os.path.dirname(__file__), "results", "cpu-quick.json" if args.quick else "cpu.json"
    )

    torch = torch_setup()
    import flax

    results = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": str(jax.devices()[0].device_kind),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cores": CORES,
            "jax": jax.__version__,
            "equinox": eqx.__version__,
            "flax": flax.__version__,
            "torch": None if torch is None else torch.__version__,
            "quick": args.quick,
            "sizes": {"obs": P.OBS, "hidden": P.HIDDEN, "lstm": P.LSTM, "actions": P.ACTIONS},
            "load_before": os.getloadavg(),
        },
    }
    log("matmul peak...")
    peaks = [matmul_peak()]
    log(f"  {peaks[0]:.1f} GFLOP/s")
    seq = [
        {"T": t_len, "B": batch, **times}
        for (t_len, batch), times in bench_sequences(grid, repeats, target_s, torch).items()
    ]
    if args.sequence_only:
        steps_b, rollout_b = [], []
    steps = [{"B": b, "times": bench_step(b, repeats + 2, target_s, torch)} for b in steps_b]
    rollouts = [{"B": b, "per_step": bench_rollout(b, 128, repeats, target_s)} for b in rollout_b]
    compile_ = None if args.sequence_only else bench_compile(*compile_shape, compile_repeats)
    peaks.append(matmul_peak())
    log(f"matmul peak again: {peaks[1]:.1f} GFLOP/s")
    peak = max(peaks)
    for row in seq:
        row["flops"] = {
            "fwd": P.model_flops(row["T"], row["B"], backward=False),
            "fwd_bwd": P.model_flops(row["T"], row["B"], backward=True),
        }
    results.update(
        matmul_gflops=peak,
        matmul_gflops_samples=peaks,
        sequence=seq,
        step=steps,
        rollout=rollouts,
        compile=None
        if compile_ is None
        else {"T": compile_shape[0], "B": compile_shape[1], **compile_},
    )
    results["meta"]["load_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)
    from .report import sequence_table, summary_table

    print("\n".join(sequence_table(results)) if args.sequence_only else summary_table(results))
    log(f"wrote {out_path}")


if __name__ == "__main__":
    main()
