"""Turn benchmark results (JSON from `benchmarks.run`) into `docs/benchmarks.md` and a plot.

python -m benchmarks.report [benchmarks/results/cpu.json]
"""

import json
import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("flax", "torch", "torch_1t")


def _best_peer(times: dict) -> tuple[str, float]:
    name = min((k for k in times if k in PEERS), key=lambda k: times[k])
    return name, times[name]


def _torch_best(times: dict) -> float | None:
    ts = [times[k] for k in ("torch", "torch_1t") if k in times]
    return min(ts) if ts else None


def _fmt(x, scale, digits=2):
    return "-" if x is None else f"{x * scale:.{digits}f}"


def sequence_rows(results):
    peak = results["matmul_gflops"]
    rows = []
    for r in results["sequence"]:
        for mode in ("fwd", "fwd_bwd"):
            t = r[mode]
            peer, peer_t = _best_peer(t)
            gflops = r["flops"][mode] / t["ours"] / 1e9
            rows.append(
                {
                    "T": r["T"],
                    "B": r["B"],
                    "mode": mode,
                    "ours_ms": t["ours"] * 1e3,
                    "filter_ms": t["ours_filter_jit"] * 1e3 if "ours_filter_jit" in t else None,
                    "flax_ms": t["flax"] * 1e3,
                    "torch_ms": None if _torch_best(t) is None else _torch_best(t) * 1e3,
                    "speedup": peer_t / t["ours"],
                    "vs": peer,
                    "gflops": gflops,
                    "peak_frac": gflops / peak,
                }
            )
    return rows


def sequence_table(results) -> list[str]:
    """The sequence-mode rows as a Markdown table."""
    lines = [
        "| T | B | pass | ours (ms) | ours via `eqx.filter_jit` (ms) | flax nnx (ms) "
        "| torch (ms) | speed-up vs faster peer | ours GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sequence_rows(results):
        lines.append(
            f"| {r['T']} | {r['B']} | {r['mode'].replace('_', '+')} | {r['ours_ms']:.2f} "
            f"| {_fmt(r['filter_ms'], 1)} "
            f"| {r['flax_ms']:.2f} | {_fmt(r['torch_ms'], 1)} | **{r['speedup']:.2f}x** "
            f"({r['vs']}) | {r['gflops']:.0f} | {100 * r['peak_frac']:.0f}% |"
        )
    return lines


def summary_table(results) -> str:
    """The results as Markdown tables (also printed by `benchmarks.run`)."""
    lines = []
    peak = results["matmul_gflops"]
    meta = results["meta"]
    lines.append(
        f"Machine: {meta['processor']}, {meta['cores']} cores ({meta['device']}); "
        f"jax {meta['jax']}, flax {meta['flax']}, torch {meta['torch']}; "
        f"load average {meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after."
    )
    lines.append(f"Matmul peak (float32 `jnp.dot`, 2048x2048): **{peak:.0f} GFLOP/s**.")
    lines.append("")
    lines.append("### Sequence mode (ratios > 1: ours faster)")
    lines.append("")
    lines.extend(sequence_table(results))
    lines.append("")
    lines.append("### Single step (one jitted call, carry in `eqx.nn.State`)")
    lines.append("")
    lines.append(
        "| B | ours `Actor` (us) | ours `model.act` (us) | flax nnx (us) | torch (us) "
        "| torch / ours `Actor` | flax / ours `Actor` |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for r in results["step"]:
        t = r["times"]
        tb = _torch_best(t)
        lines.append(
            f"| {r['B']} | {t['ours'] * 1e6:.0f} | {_fmt(t.get('ours_act'), 1e6, 0)} "
            f"| {t['flax'] * 1e6:.0f} | {_fmt(tb, 1e6, 0)} "
            f"| **{_fmt(None if tb is None else tb / t['ours'], 1)}x** "
            f"| {t['flax'] / t['ours']:.2f}x |"
        )
    lines.append("")
    lines.append(
        "### 128-step rollout: fused `eqx_lstm_ac.rollout` vs a Python loop of jitted steps"
    )
    lines.append("")
    lines.append("| B | fused (us/step) | loop (us/step) | loop / fused |")
    lines.append("|---|---|---|---|")
    for r in results["rollout"]:
        p = r["per_step"]
        lines.append(
            f"| {r['B']} | {p['fused'] * 1e6:.1f} | {p['loop'] * 1e6:.1f} "
            f"| **{p['loop'] / p['fused']:.1f}x** |"
        )
    c = results["compile"]
    lines.append("")
    lines.append(f"### Compile time and memory of forward + backward (T={c['T']}, B={c['B']})")
    lines.append("")
    lines.append("| | compile (s) | vs flax | temp memory (MiB) |")
    lines.append("|---|---|---|---|")
    for name in ("ours", "ours_remat", "flax"):
        m = c[name]["temp_bytes"]
        lines.append(
            f"| {name.replace('_', ' ')} | {c[name]['compile_s']:.2f} "
            f"| {c['flax']['compile_s'] / c[name]['compile_s']:.2f}x faster "
            f"| {'-' if m is None else f'{m / 2**20:.1f}'} |"
        )
    return "\n".join(lines)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sequence_rows(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, mode in zip(axes, ("fwd", "fwd_bwd"), strict=True):
        sel = [r for r in rows if r["mode"] == mode]
        labels = [f"T={r['T']}\nB={r['B']}" for r in sel]
        x = range(len(sel))
        width = 0.27
        for k, (key, label) in enumerate(
            (("ours_ms", "eqx_lstm_ac"), ("flax_ms", "flax nnx"), ("torch_ms", "PyTorch"))
        ):
            ys = [
                (r["flax_ms"] / r[key]) if r[key] else 0.0 for r in sel
            ]  # throughput relative to flax
            ax.bar([i + (k - 1) * width for i in x], ys, width, label=label)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_title("forward" if mode == "fwd" else "forward + backward (PPO-like loss)")
    axes[0].set_ylabel("speed relative to flax nnx (higher is faster)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Sequence mode, {results['meta']['cores']}-core {results['meta']['device']} "
        f"(obs 32, hidden 64, LSTM 128, 4 actions)",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


PAGE = """# Benchmarks

How fast `eqx_lstm_ac` runs its model, measured side by side with two peers in the same
process, at the sizes of the reference model (observations 32, encoder 64, LSTM 128,
4 actions, float32):

- **flax nnx**: the spec's model written with `nnx.Linear`, `nnx.OptimizedLSTMCell` and
  a `jax.lax.scan` over the cell, as the reference implementation does it;
- **PyTorch**: `torch.nn.Linear` encoder and heads around `torch.nn.LSTM` (its fused CPU
  kernel), with as many threads as cores (and, since a loaded machine can make
  OpenMP's thread barriers very slow, also with one thread: the table shows the faster).

All three are built from the same weights, and a test
(`tests/test_benchmark_peers.py`) holds them to the same outputs. Each figure is the
median of interleaved repetitions after warm-up, with `block_until_ready`. Only the
ratios mean something: the machine is shared and its load changes.

Regenerate this page with

```bash
bash scripts/bench.sh            # full grid, a few minutes; --quick for a smoke run
```

which sets up `.venv` with the `bench` extra, runs `python -m benchmarks.run` (results
in `benchmarks/results/cpu.json`) and then `python -m benchmarks.report`.

## What was measured

- **Sequence mode**, forward and forward + backward of a PPO-like loss (log-probability
  of fixed actions, value squared error, entropy), at $T \\in \\{32, 128\\}$ and
  $B \\in \\{16, 256, 1024\\}$. "Of matmul peak" is the model's matmul FLOPs per second as
  a fraction of a large float32 `jnp.dot` on the same machine. Ours and flax are each one
  `jax.jit` of a function of the parameter arrays, as a training step calls them; the
  `eqx.filter_jit` column is the same computation called on the model object, which
  adds Equinox's per-call cost of flattening and splitting it.
- **Single step**: one compiled call (sample an action, its log-probability and the
  value; the carry in `eqx.nn.State`) through `eqx_lstm_ac.Actor` and through
  `model.act`, against the same step of each peer.
- **Fused rollout**: 128 steps of policy and a toy JAX environment in one
  `eqx_lstm_ac.rollout` call, against a Python loop of one jitted step per call.
- **Compile time** of the forward + backward pass, and its temporary memory from the
  compiled executable's memory analysis, with and without `remat`.

![Sequence mode, speed relative to flax](images/benchmarks.png)

## Results

{tables}

## How `eqx_lstm_ac` gets there

- **Batched matmuls**: each step computes `(B, I) @ (I, 4H)` with the cell's own weights,
  pre-transposed once outside the scan, instead of a `vmap` of matrix-vector products.
- **Chunks of about 1024 rows**: the sequence is cut into chunks of `1024 / B` steps
  (at least 2). Inside a chunk the encoder, the input projection and the heads' readout
  are one matmul each over all the chunk's rows, and only `h @ W_hh` runs step by step.
  Whole-sequence hoisting makes a `(T, B, 4H)` tensor that falls out of cache; one step
  at a time loses the large matmuls; chunks keep both.
- **One `tanh` for all four gates**: `sigmoid(x) = tanh(x / 2) / 2 + 1 / 2` (halving is
  exact: a power of two). XLA's CPU `logistic` lowers to
  an exponential and a division, and the step's elementwise work took 130 us at
  B = 256 that way against 18 us with one `tanh`.
- **A hand-written reverse pass** (`jax.custom_vjp`) that keeps little: the hidden state
  `h` of every step and the cell state `c` entering each chunk, not the `4H` gates nor
  `c` of every step. Per chunk, the reverse pass recomputes the gates with one matmul of
  `[z, h_prev] @ [W_ih; W_hh]` and the cell states elementwise from them, runs only the
  recurrence step by step (gate gradients and `d_gates @ W_hh`), and then computes the
  weight gradients and the encoder's gradients as one matmul each over the chunk's rows.
  The linear heads are read out inside the kernel, so the `(T, B, H)` hidden states and
  their cotangent never leave it, and the observations' gradient is computed only when
  it is asked for. At T=128, B=256 this is 31 MiB of temporaries (flax: 259 MiB), under
  the 32 MiB above which glibc's allocator maps fresh pages for every call (see the
  notes below). It matches `jax.grad` of the plain scan to float32 precision, with the
  gradients of the observations and of the initial carry, with episode starts inside
  the sequence and across chunk boundaries (`tests/test_speed_exactness.py`).
  `remat=True` keeps the plain scan with the step under `jax.checkpoint` (twice the
  memory, since it keeps `h` and `c` of every step; slower; and forward-mode
  differentiation too).
- **`eqx_lstm_ac.Actor`** for single steps from Python: `model.act` is an
  `eqx.filter_jit` method that flattens and splits the model on every call; an `Actor`
  splits it once and calls a plain `jax.jit` function of the arrays.
- **Fused rollouts**: `eqx_lstm_ac.rollout` runs many environment steps in one compiled
  `jax.lax.scan`, which removes the per-call dispatch cost of single steps.

{notes}
"""


def write_page(results, page_path, image_path, notes=""):
    plot(results, image_path)
    rel = os.path.relpath(image_path, os.path.dirname(page_path))
    text = PAGE.replace("{tables}", summary_table(results)).replace("{notes}", notes)
    text = text.replace("images/benchmarks.png", rel).replace("\\\\", "\\")
    with open(page_path, "w") as f:
        f.write(text)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(ROOT, "benchmarks", "results", "cpu.json")
    with open(path) as f:
        results = json.load(f)
    notes_path = os.path.join(ROOT, "benchmarks", "results", "notes.md")
    notes = open(notes_path).read() if os.path.exists(notes_path) else ""
    tuned_path = os.path.join(ROOT, "benchmarks", "results", "cpu-malloc-tuned.json")
    if os.path.exists(tuned_path):
        with open(tuned_path) as f:
            tuned = json.load(f)
        notes = notes.replace(
            "{malloc_tuned_table}",
            f"Matmul peak in that run: {tuned['matmul_gflops']:.0f} GFLOP/s.\n\n"
            + "\n".join(sequence_table(tuned)),
        )
    write_page(
        results,
        os.path.join(ROOT, "docs", "benchmarks.md"),
        os.path.join(ROOT, "docs", "images", "benchmarks.png"),
        notes,
    )
    print(f"wrote docs/benchmarks.md from {path}")


if __name__ == "__main__":
    main()
