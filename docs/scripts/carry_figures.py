"""Draw the two pictures of the calling-modes guide: when the carry is reset in a rollout
and in a training sequence, and which carry a rollout stores for training.

Writes `docs/images/rollout.png` and `docs/images/training_sequence.png`. Run from the
repository root: `.venv/bin/python docs/scripts/carry_figures.py` (or
`bash scripts/docs.sh figures` for every picture).
"""

from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402


OUT = Path(__file__).resolve().parents[1] / "images"
EPISODE_COLOURS = ["#cfe3f7", "#fde2c4", "#d6efd0", "#ead7f2", "#f7d4d4"]
RESET = "#c0392b"
CARRY = "#34495e"
STORED = "#16a085"


def _arrow(ax, start, end, colour=CARRY, style="-|>", lw=1.6, ls="-", mut=12):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=mut, color=colour, lw=lw, linestyle=ls
        )
    )


def _box(ax, x, y, w, h, face, text, edge="#555555", size=9, lw=1.0):
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            fc=face,
            ec=edge,
            lw=lw,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=size)


def rollout() -> None:
    """One environment over 8 steps of a rollout; an episode ends at step 3 (done)."""
    steps = 8
    done_at = {3}  # the environment reports done after step 3 ...
    starts = {t + 1 for t in done_at}  # ... so observation 4 starts a new episode
    fig, ax = plt.subplots(figsize=(12, 4.6))
    ax.set_xlim(-2.1, steps + 1.1)
    ax.set_ylim(-2.45, 2.2)
    ax.axis("off")

    episode = 0
    for t in range(steps):
        if t in starts:
            episode += 1
        colour = EPISODE_COLOURS[episode]
        # the step: model.act on observation t
        _box(ax, t, 0.0, 0.62, 0.62, colour, f"act\n$x_{{{t}}}$", size=9)
        # observation in, action out
        _arrow(ax, (t, -0.85), (t, -0.33), colour="#7f8c8d", lw=1.0, mut=9)
        ax.text(t, -1.0, f"obs {t}", ha="center", va="top", fontsize=8, color="#555555")
        _arrow(ax, (t, 0.33), (t, 0.8), colour="#7f8c8d", lw=1.0, mut=9)
        ax.text(t, 0.86, f"$a_{{{t}}}$", ha="center", va="bottom", fontsize=9)
        # the reset flags stored with the rollout
        flag = t in starts
        ax.text(
            t,
            -1.55,
            "True" if flag else "False",
            ha="center",
            va="center",
            fontsize=8.5,
            color=RESET if flag else "#555555",
            fontweight="bold" if flag else "normal",
        )
        if t in done_at:
            ax.text(t, 1.45, "env: done", ha="center", fontsize=8.5, color=RESET)
        # the carry from step t-1 to step t
        if t > 0:
            if t in starts:
                _arrow(ax, (t - 0.69, 0.0), (t - 0.5, 0.0), colour=CARRY, style="-")
                ax.plot([t - 0.5], [0.0], marker="x", ms=11, mew=2.5, color=RESET)
                _arrow(ax, (t - 0.45, 0.0), (t - 0.31, 0.0), colour=RESET)
            else:
                _arrow(ax, (t - 0.69, 0.0), (t - 0.31, 0.0))
    ax.text(
        -1.95, -1.55, "episode_start[t]", ha="left", va="center", fontsize=9, family="monospace"
    )
    ax.text(-1.95, -1.0, "observation", ha="left", va="top", fontsize=9)

    # the carry stored before the rollout, and the one left at its end
    _box(ax, -1.3, 0.0, 0.9, 0.62, "#e8f8f5", "$c_0$\n(last rollout)", edge=STORED, size=8.5)
    _arrow(ax, (-0.85, 0.0), (-0.31, 0.0))
    _arrow(ax, (-1.3, 0.33), (-1.3, 0.75), colour=STORED, mut=10)
    ax.text(
        -1.3,
        0.8,
        "stored with the rollout:\nc0 = model.carry(state)",
        ha="center",
        va="bottom",
        fontsize=7.5,
        color=STORED,
        family="monospace",
    )
    _arrow(ax, (steps - 0.69, 0.0), (steps - 0.1, 0.0))
    ax.text(
        steps - 0.05,
        0.0,
        "final carry:\nthe next\nrollout's $c_0$",
        ha="left",
        va="center",
        fontsize=8.5,
        color=STORED,
    )

    ax.annotate(
        "carry zeroed before step 4:\nstate = model.reset(state, x.shape, mask=episode_start[4])",
        xy=(3.5, -0.12),
        xytext=(3.45, -2.2),
        fontsize=8.5,
        family="monospace",
        color=RESET,
        ha="left",
        arrowprops=dict(arrowstyle="->", color=RESET, lw=1.0, relpos=(0.0, 1.0)),
    )
    ax.text(
        -2.05,
        1.95,
        "Rollout (single-step mode): at every step, reset where an episode starts, then act",
        fontsize=11,
        fontweight="bold",
    )
    ax.text(1.5, 1.45, "episode 1", ha="center", fontsize=9, color="#2c6fad")
    ax.text(5.5, 1.45, "episode 2", ha="center", fontsize=9, color="#c47a17")
    fig.tight_layout()
    fig.savefig(OUT / "rollout.png", dpi=130)
    plt.close(fig)


def training_sequence() -> None:
    """The rollout's (T, B) grid replayed by `model.sequence` with `episode_start`."""
    t_len, batch = 8, 4
    starts = [[False] * t_len for _ in range(batch)]
    for b, t in [(0, 4), (1, 2), (1, 6), (3, 5)]:
        starts[b][t] = True
    fig, ax = plt.subplots(figsize=(12, 4.9))
    ax.set_xlim(-2.2, t_len + 0.3)
    ax.set_ylim(-1.35, batch + 0.85)
    ax.axis("off")
    for b in range(batch):
        y = batch - 1 - b
        episode = 0
        ax.text(-2.15, y, f"env b={b}", va="center", fontsize=9)
        _box(ax, -1.05, y, 0.62, 0.56, "#e8f8f5", f"$c_0[{b}]$", edge=STORED, size=9)
        _arrow(ax, (-0.73, y), (-0.3, y))
        for t in range(t_len):
            s = starts[b][t]
            if s:
                episode += 1
            _box(
                ax,
                t,
                y,
                0.6,
                0.56,
                EPISODE_COLOURS[(episode + b) % len(EPISODE_COLOURS)],
                "T" if s else "",
                edge=RESET if s else "#555555",
                lw=2.2 if s else 1.0,
                size=10,
            )
            if s:
                ax.plot([t - 0.5], [y], marker="x", ms=10, mew=2.5, color=RESET)
                _arrow(ax, (t - 0.7, y), (t - 0.53, y), style="-")
                _arrow(ax, (t - 0.46, y), (t - 0.3, y), colour=RESET)
            elif t > 0:
                _arrow(ax, (t - 0.7, y), (t - 0.3, y))
        _arrow(ax, (t_len - 0.7, y), (t_len - 0.15, y))
    for t in range(t_len):
        ax.text(t, batch - 0.35, f"t={t}", ha="center", fontsize=9)
    ax.text(t_len - 0.1, batch - 0.35, "final\ncarry", ha="center", fontsize=8, va="bottom")
    ax.text(
        -2.15,
        batch + 0.45,
        "Training (sequence mode): model.sequence(xs, carry=c0, episode_start=starts)",
        fontsize=11,
        fontweight="bold",
        family="monospace",
    )
    ax.text(
        -2.15,
        -0.85,
        "A cell marked T has episode_start[t, b] = True: observation t of env b begins an "
        "episode,\nso the carry of env b is zeroed before step t (red cross). Colours are "
        "episodes. Row b starts from the carry\nc0[b] stored before the rollout, so every "
        "step sees the same carry it saw during the rollout.",
        fontsize=9,
        va="center",
    )
    fig.tight_layout()
    fig.savefig(OUT / "training_sequence.png", dpi=130)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rollout()
    training_sequence()
    print(f"wrote {OUT / 'rollout.png'} and {OUT / 'training_sequence.png'}")


if __name__ == "__main__":
    main()
