"""Draw the pictures of the action-spaces guide from the library's own bijectors and
policies: each space's mapping, the action density it makes of a Gaussian, and how well
the entropy quadrature does.

Writes `docs/images/action_mapping.png`, `docs/images/action_density.png`,
`docs/images/maxnorm_density.png` and `docs/images/entropy_quadrature.png`. Run from the
repository root: `.venv/bin/python docs/scripts/action_space_figures.py` (or
`bash scripts/docs.sh figures` for every picture).
"""

from pathlib import Path

import distrax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import eqx_lstm_ac as lac


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


OUT = Path(__file__).resolve().parents[1] / "images"


def _policy(space, mu, sigma):
    """A policy over one action coordinate (or over `len(mu)` for a vector space)."""
    # lift a scalar bijector to action vectors, as the model does
    bij = distrax.Block(space, ndims=1) if space.event_ndims_in == 0 else space
    return lac.GaussianPolicy(jnp.asarray(mu), jnp.asarray(sigma), bij)


def mapping() -> None:
    x = jnp.linspace(-4.0, 4.0, 401)
    spaces = [
        ("FreeSpace()", lac.FreeSpace()),
        ("BoxSpace(-1, 1)", lac.BoxSpace(-1.0, 1.0)),
        ("BoxSpace(-1, 1, width=2)", lac.BoxSpace(-1.0, 1.0, width=2.0)),
        ("BoxSpace(0, 3)", lac.BoxSpace(0.0, 3.0)),
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, space in spaces:
        y, log_det = space.forward_and_log_det(x)
        ax1.plot(x, y, label=name, lw=2)
        ax2.plot(x, log_det, label=name, lw=2)
    ax1.set(xlabel="unconstrained $x$ (Gaussian sample)", ylabel="action $y = f(x)$")
    ax1.set_title("The mapping $f$")
    ax1.set_ylim(-2.2, 3.4)
    ax2.set(xlabel="unconstrained $x$", ylabel=r"$\log|f'(x)|$")
    ax2.set_title("Its log-derivative (the log-det-Jacobian per coordinate)")
    ax2.set_ylim(-8, 1.5)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "action_mapping.png", dpi=110)
    plt.close(fig)


def density() -> None:
    space = lac.BoxSpace(-1.0, 1.0)
    y = jnp.linspace(-0.999, 0.999, 999)[:, None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), sharey=True)
    for ax, mu in zip(axes, (0.0, 1.5), strict=True):
        for sigma in (0.3, 1.0, 2.0):
            pi = _policy(space, [mu], [sigma])
            p = jnp.exp(pi.log_prob(y))
            ax.plot(y[:, 0], p, lw=2, label=rf"$\sigma = {sigma}$")
        ax.axvline(float(jnp.tanh(mu)), color="k", ls=":", lw=1)
        shift = 0.02 if mu < 1 else -0.03
        ax.text(
            float(jnp.tanh(mu)) + shift,
            3.6,
            r"$f(\mu)$",
            fontsize=9,
            ha="left" if mu < 1 else "right",
        )
        ax.set(xlabel="action $y$", title=rf"BoxSpace(-1, 1), $\mu = {mu}$")
        ax.set_ylim(0, 4)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
    axes[0].set_ylabel("density of the action $p_Y(y)$")
    fig.tight_layout()
    fig.savefig(OUT / "action_density.png", dpi=110)
    plt.close(fig)


def maxnorm_density() -> None:
    space = lac.MaxNormSpace(1.0)
    n = 241
    g = jnp.linspace(-0.995, 0.995, n)
    yy = jnp.stack(jnp.meshgrid(g, g, indexing="xy"), axis=-1).reshape(-1, 2)
    inside = jnp.linalg.norm(yy, axis=-1) < 0.995
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, (mu, sigma) in zip(
        axes, [([0.0, 0.0], [0.5, 0.5]), ([0.6, 0.3], [0.6, 0.6])], strict=True
    ):
        pi = _policy(space, mu, sigma)
        p = jnp.where(inside, jnp.exp(pi.log_prob(yy)), jnp.nan).reshape(n, n)
        im = ax.imshow(
            np.asarray(p), origin="lower", extent=(-1, 1, -1, 1), cmap="viridis", vmin=0.0
        )
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="k", lw=1))
        fmu = np.asarray(space.forward(jnp.asarray(mu)))
        ax.plot(*fmu, marker="+", color="w", ms=12, mew=2)
        ax.set_title(rf"MaxNormSpace(1.0), $\mu = {tuple(mu)}$, $\sigma = {sigma[0]}$", fontsize=10)
        ax.set(xlabel="$y_1$", ylabel="$y_2$")
        fig.colorbar(im, ax=ax, shrink=0.8, label="$p_Y(y)$")
    fig.tight_layout()
    fig.savefig(OUT / "maxnorm_density.png", dpi=110)
    plt.close(fig)


def _log_sech2(z):
    a = np.abs(z)
    return 2.0 * (np.log(2.0) - a - np.logaddexp(0.0, -2.0 * a))


def entropy_quadrature() -> None:
    space = lac.BoxSpace(-1.0, 1.0)
    mu = 0.5
    sigmas = np.linspace(0.1, 3.0, 30)
    quad, mc, mc_err, gauss = [], [], [], []
    key = jax.random.key(0)
    for s in sigmas:
        pi = _policy(space, [mu], [float(s)])
        quad.append(float(pi.entropy()))
        gauss.append(float(pi.distribution.entropy()))
        a, lp = pi.sample_and_log_prob(seed=key, sample_shape=(100_000,))
        del a
        mc.append(float(-lp.mean()))
        mc_err.append(float(lp.std() / np.sqrt(lp.shape[0])))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(sigmas, gauss, "--", color="gray", label=r"$H(X)$, the Gaussian before $f$")
    ax1.plot(sigmas, quad, lw=2, label=r"$H(Y)$ by 32-node Gauss-Hermite (the library)")
    ax1.errorbar(
        sigmas, mc, yerr=mc_err, fmt="o", ms=3, label=r"$H(Y)$ by Monte Carlo, $10^5$ samples"
    )
    ax1.set(xlabel=r"$\sigma$", ylabel="entropy (nats)", title=rf"BoxSpace(-1, 1), $\mu = {mu}$")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8.5)

    # error of an n-node rule for E[log sech^2(X)], X ~ N(mu, sigma^2), against 150 nodes
    nodes = np.arange(2, 65)
    for s in (0.5, 1.0, 2.0, 3.0):
        z, w = np.polynomial.hermite_e.hermegauss(150)
        ref = np.sum(w * _log_sech2(mu + s * z)) / w.sum()
        errs = []
        for n in nodes:
            z, w = np.polynomial.hermite_e.hermegauss(int(n))
            errs.append(abs(np.sum(w * _log_sech2(mu + s * z)) / w.sum() - ref))
        x = np.random.default_rng(0).normal(mu, s, 100_000)
        se = _log_sech2(x).std() / np.sqrt(x.size)
        (line,) = ax2.semilogy(nodes, np.maximum(errs, 1e-12), lw=1.8, label=rf"$\sigma = {s}$")
        ax2.axhline(se, color=line.get_color(), ls=":", lw=1)
    ax2.axvline(5, color="k", lw=0.8, ls="--")
    ax2.axvline(32, color="k", lw=0.8)
    ax2.text(5.5, 2e-11, "5 nodes", fontsize=8)
    ax2.text(32.5, 2e-11, "32 nodes (used)", fontsize=8)
    ax2.set(
        xlabel="Gauss-Hermite nodes per coordinate",
        ylabel=r"error of $E[\log|f'(X)|]$ (nats)",
        title="Quadrature error; dotted: Monte Carlo std. error, $10^5$ samples",
    )
    ax2.title.set_fontsize(10)
    ax2.set_ylim(1e-11, 1)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(OUT / "entropy_quadrature.png", dpi=110)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    mapping()
    density()
    maxnorm_density()
    entropy_quadrature()
    print(f"wrote the action-space pictures to {OUT}")


if __name__ == "__main__":
    main()
