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


def sequence_table(results, modes=("fwd", "fwd_bwd")) -> list[str]:
    """The sequence-mode rows as a Markdown table (narrow enough for the site's column)."""
    lines = [
        "| T | B | pass | ours (ms) | flax nnx (ms) | torch (ms) | ours vs faster peer "
        "| GFLOP/s (of peak) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sequence_rows(results):
        if r["mode"] not in modes:
            continue
        lines.append(
            f"| {r['T']} | {r['B']} | {r['mode'].replace('_', '+')} | {r['ours_ms']:.1f} "
            f"| {r['flax_ms']:.1f} | {_fmt(r['torch_ms'], 1, 1)} | **{r['speedup']:.2f}x** "
            f"({r['vs'].replace('_1t', '')}) | {r['gflops']:.0f} "
            f"({100 * r['peak_frac']:.0f}%) |"
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
        f"load average {meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after. "
        f"Matmul peak (float32 `jnp.dot`, 2048x2048): {peak:.0f} GFLOP/s."
    )
    lines.append("")
    lines.append("### Sequence mode")
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
    lines.append("### 128-step rollout: one `eqx_lstm_ac.rollout` call against a Python loop")
    lines.append("")
    lines.append("| B | fused (us/step) | loop of jitted steps (us/step) | loop / fused |")
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
    names = ("ours", "ours_remat", "flax")
    timed = all("run_s" in c[name] for name in names)  # the run time of each compiled pass
    lines.append(
        "| | compile (s) | flax's / this | temporary memory (MiB) |"
        + (" one call (ms) |" if timed else "")
    )
    lines.append("|---|---|---|---|" + ("---|" if timed else ""))
    for name in names:
        m = c[name]["temp_bytes"]
        label = {"ours": "ours", "ours_remat": "ours, `remat=True`", "flax": "flax nnx"}[name]
        lines.append(
            f"| {label} | {c[name]['compile_s']:.2f} "
            f"| {c['flax']['compile_s'] / c[name]['compile_s']:.2f}x "
            f"| {'-' if m is None else f'{m / 2**20:.1f}'} |"
            + (f" {c[name]['run_s'] * 1e3:.0f} |" if timed else "")
        )
    return "\n".join(lines)


def headline(results) -> dict[str, str]:
    """The figures the page's first paragraph quotes, from the results."""
    rows = {(r["T"], r["B"], r["mode"]): r for r in sequence_rows(results)}
    h = rows[(128, 256, "fwd_bwd")]
    c = results["compile"]
    step = {r["B"]: r["times"] for r in results["step"]}
    roll = {r["B"]: r["per_step"] for r in results["rollout"]}
    big = [r for r in sequence_rows(results) if r["B"] >= 256 and r["mode"] == "fwd_bwd"]
    small = [r for r in sequence_rows(results) if r["B"] == 16]
    return {
        "ours_ms": f"{h['ours_ms']:.0f}",
        "flax_ms": f"{h['flax_ms']:.0f}",
        "torch_ms": _fmt(h["torch_ms"], 1, 0),
        "speedup": f"{h['speedup']:.2f}",
        "big_range": f"{min(r['speedup'] for r in big):.2f}-{max(r['speedup'] for r in big):.2f}",
        "memory": f"{c['ours']['temp_bytes'] / 2**20:.0f}",
        "flax_memory": f"{c['flax']['temp_bytes'] / 2**20:.0f}",
        "memory_ratio": f"{c['flax']['temp_bytes'] / c['ours']['temp_bytes']:.1f}",
        "step_ratio": f"{_torch_best(step[1]) / step[1]['ours']:.1f}",
        "rollout_ratio": f"{roll[1]['loop'] / roll[1]['fused']:.0f}",
        "small_worst": f"{1 / min(r['speedup'] for r in small):.1f}",
    }


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

How fast `eqx_lstm_ac` runs its model, against the same model written with flax nnx and
with PyTorch, in the same process, at the reference model's sizes (observations 32,
encoder 64, LSTM 128, 4 actions, float32) on a 2-core CPU.

**In short.** One training pass (forward and backward of a PPO loss) over 128 steps of
256 environments takes {ours_ms} ms, against {flax_ms} ms for flax nnx and {torch_ms} ms
for PyTorch: **{speedup}x** the faster peer ({big_range}x at every shape with 256 or
more environments), with {memory} MiB of temporary memory where flax needs
{flax_memory} MiB ({memory_ratio}x less). A single step from Python through
`eqx_lstm_ac.Actor` is {step_ratio}x faster than PyTorch's at batch 1, and a rollout
fused into one `eqx_lstm_ac.rollout` call costs {rollout_ratio}x less per step than a
Python loop. PyTorch's fused LSTM stays faster at 16 environments (up to
{small_worst}x), and part of the lead at large batches is memory allocation (see the
caveats below).

![Sequence mode, speed relative to flax](images/benchmarks.png)

## Results

Ratios above 1 mean `eqx_lstm_ac` is faster. Only the ratios carry over to another
machine; the milliseconds are this one's.

{tables}

## What was measured

- **Sequence mode**: forward, and forward + backward of a PPO-like loss
  (log-probability of fixed actions, value error, entropy), for $T \\in \\{32, 128\\}$
  steps and $B \\in \\{16, 256, 1024\\}$ environments. Ours and flax are each one
  `jax.jit` of a function of the parameter arrays, as a training step calls them
  (through `eqx.filter_jit` on the model object ours is within the noise of that).
  PyTorch runs its fused `torch.nn.LSTM`, with 2 threads and with 1; the table shows
  the faster. GFLOP/s counts the model's matmuls, as a fraction of a large `jnp.dot`.
- **Single step**: sample an action, its log-probability and the value, the carry in
  `eqx.nn.State`, through `eqx_lstm_ac.Actor` and through `model.act`.
- **Fused rollout**: 128 steps of policy and a small JAX environment in one call,
  against a Python loop of one jitted step per call.
- **Compile time** of forward + backward, and its temporary memory from the compiled
  executable's memory analysis.

All three models are built from the same weights and held to the same outputs by
`tests/test_benchmark_peers.py`. Each figure is the median of 15 interleaved rounds
after warm-up (round `r` of every shape before round `r + 1` of any, the peers' order
rotating), because the machine is shared: differences under about 10% are noise.

Reproduce (a few minutes; `--quick` for a smoke run):

```bash
bash scripts/bench.sh
```

It sets up `.venv` with the `bench` extra, writes `benchmarks/results/cpu.json` and
regenerates this page and its plot.

## Where the speed comes from

- **Chunks of about 1024 rows** (steps x environments): inside a chunk the encoder, the
  input projection and the heads' readout are one matmul each, and only `h @ W_hh` runs
  step by step.
- **A hand-written reverse pass** (`jax.custom_vjp`) that keeps only `h` of every step
  and `c` where each chunk begins, and recomputes the gates one matmul per chunk. It
  equals `jax.grad` of the plain scan to float32 precision
  (`tests/test_speed_exactness.py`), and its temporaries stay under the 32 MiB above
  which glibc's allocator maps fresh pages on every call.
- **One `tanh` for all four gates** ($\\sigma(x) = \\tanh(x/2)/2 + 1/2$), where XLA's CPU
  `logistic` costs an exponential and a division.
- **`eqx_lstm_ac.Actor`** splits the model once and calls a plain `jax.jit` function,
  where `model.act` (`eqx.filter_jit`) flattens the model on every call.

## Caveats

Part of the lead at large batches is memory: the peers allocate temporaries of hundreds
of MiB anew on every call, and the first touch of fresh pages is slow. With glibc told
to keep freed memory (`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000`, exported before Python starts; the library cannot
set them for you), the peers speed up and ours does not; forward + backward then reads:

{malloc_tuned}

- At 16 environments the step's `(16, 128) @ (128, 512)` product is too small for XLA's
  CPU backend to split across cores; PyTorch's fused kernel is faster there.
- Compiling forward + backward takes longer than flax's (more, smaller kernels); with
  `remat=True` (a plain scan under `jax.checkpoint`) it compiles as fast, with twice
  the memory and a slower pass.

Tried and measured no better: unrolling the scans; one matmul on `[z, h]` per step;
pipelining the reverse pass across chunks; per-gate nonlinearities; other chunk sizes
(512 to 2048 rows); YNNPACK fusion and XLA's lower optimisation levels. The profile and
every measurement behind these lines are in `benchmarks/NOTES.md`.
"""


def write_page(results, page_path, image_path, malloc_tuned=""):
    plot(results, image_path)
    rel = os.path.relpath(image_path, os.path.dirname(page_path))
    text = PAGE.replace("{tables}", summary_table(results))
    text = text.replace("{malloc_tuned}", malloc_tuned)
    for key, value in headline(results).items():
        text = text.replace("{" + key + "}", value)
    text = text.replace("images/benchmarks.png", rel).replace("\\\\", "\\")
    tmp = page_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, page_path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(ROOT, "benchmarks", "results", "cpu.json")
    with open(path) as f:
        results = json.load(f)
    tuned_path = os.path.join(ROOT, "benchmarks", "results", "cpu-malloc-tuned.json")
    malloc_tuned = "(no `benchmarks/results/cpu-malloc-tuned.json` yet)"
    if os.path.exists(tuned_path):
        with open(tuned_path) as f:
            tuned = json.load(f)
        table = sequence_table(tuned, modes=("fwd_bwd",))
        malloc_tuned = "\n".join(table)
    write_page(
        results,
        os.path.join(ROOT, "docs", "benchmarks.md"),
        os.path.join(ROOT, "docs", "images", "benchmarks.png"),
        malloc_tuned,
    )
    print(f"wrote docs/benchmarks.md from {path}")


if __name__ == "__main__":
    main()
