"""The benchmark peers compute our model's function when given our weights.

Skipped unless the `bench` extra (flax, torch) is installed. A benchmark is only a fair
comparison if every side computes the same thing: this holds the flax nnx and PyTorch
peers to our forward outputs, loss and single step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


pytest.importorskip("flax")
torch = pytest.importorskip("torch")

from benchmarks import peers as P  # noqa: E402


T, B = 5, 3


def _inputs():
    k = jax.random.split(jax.random.key(3), 3)
    xs = jax.random.normal(k[0], (T, B, P.OBS))
    actions = jax.random.normal(k[1], (T, B, P.ACTIONS))
    returns = jax.random.normal(k[2], (T, B))
    return xs, actions, returns


def _close(a, b, tol=2e-5):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(b)))))


def test_peers_same_forward_and_loss():
    model = P.make_ours(seed=1)
    xs, actions, returns = _inputs()
    mu, value = P.ours_forward(model, xs)
    loss = P.ours_loss(model, xs, actions, returns)

    graphdef, params = P.flax_from_ours(model)
    f_fwd, f_loss, _ = P.flax_functions(graphdef)
    f_mu, f_value = f_fwd(params, xs)
    _close(f_mu, mu)
    _close(f_value, value)
    _close(f_loss(params, xs, actions, returns), loss)

    tm = P.torch_from_ours(model)
    txs, tact, tret = (torch.from_numpy(np.array(a)) for a in (xs, actions, returns))
    with torch.no_grad():
        t_mu, t_value, _ = tm.sequence(txs)
        t_loss = tm.loss(txs, tact, tret)
    _close(t_mu.numpy(), mu)
    _close(t_value.numpy(), value)
    _close(t_loss.numpy(), loss)


def test_peers_same_single_step():
    model = P.make_ours(seed=2)
    xs, _, _ = _inputs()
    state = model.init_state((B,))
    graphdef, params = P.flax_from_ours(model)
    _, _, f_step = P.flax_functions(graphdef)
    z = jnp.zeros((B, P.LSTM))
    f_carry = (z, z)
    tm = P.torch_from_ours(model)
    t_carry = None
    for x in xs:
        (pi, value), state = model(x, state)
        f_mu, f_value, f_carry = f_step(params, x, f_carry)
        with torch.no_grad():
            t_mu, t_value, t_carry = tm.sequence(torch.from_numpy(np.array(x))[None], t_carry)
        _close(f_mu, pi.loc)
        _close(f_value, value)
        _close(t_mu[0].numpy(), pi.loc)
        _close(t_value[0].numpy(), value)
