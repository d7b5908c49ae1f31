"""Data parallelism. The checks on 4 (simulated CPU) devices run in a subprocess, since
the number of devices is fixed when JAX starts; the rest of the suite keeps one device."""

import os
import re
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac

from .helpers import make_model


ROOT = Path(__file__).resolve().parent.parent


def test_on_4_devices():
    """`tests/parallel_checks.py` under `pytest` with 4 CPU devices: inference keeps the
    batch sharding, and one update on 4 devices equals the single-device update."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        cmd + ["tests/parallel_checks.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), out
    assert not re.search(r"failed|error|skipped", summary), out


def test_one_device_helpers():
    mesh = lac.data_mesh()
    assert mesh.axis_names == (lac.DATA_AXIS,)
    n = jax.device_count()
    assert mesh.shape[lac.DATA_AXIS] == n
    assert lac.check_num_envs(3 * n, mesh) == 3
    assert lac.process_slice(3 * n, mesh) == slice(0, 3 * n)
    with pytest.raises(ValueError, match="between 1 and the number of devices"):
        lac.data_mesh(n + 1)
    with pytest.raises(ValueError, match="positive int"):
        lac.check_num_envs(0, mesh)
    with pytest.raises(ValueError, match="axis named 'data'"):
        lac.check_num_envs(4, jax.make_mesh((n,), ("batch",)))


def test_data_parallel_grad_on_one_device():
    """On a one-device mesh (what a training loop gets on one accelerator), the
    data-parallel gradient is the ordinary one, `pmean` over `data` included."""
    mesh = lac.data_mesh(1)
    model = {"w": jnp.arange(3.0), "name": "static", "k": jnp.arange(3)}
    batch = {"x": jnp.ones((2, 4, 3)), "y": jnp.ones((4,))}

    def loss(m, b, mean=jnp.mean):
        pred = jnp.sum(b["x"] * m["w"][None, None, :], axis=(0, 2))
        return mean(jnp.square(pred - b["y"]))

    def dp_loss(m, b):
        return loss(m, b, lambda x: jax.lax.pmean(jnp.mean(x), lac.DATA_AXIS))

    grad_fn = lac.data_parallel_grad(dp_loss, mesh, batch_axis={"x": 1, "y": 0})
    value, grads = grad_fn(lac.replicate(model, mesh), batch)
    want_value, want = eqx.filter_value_and_grad(loss)(model, batch)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grads["w"], want["w"], rtol=1e-6)
    assert grads["k"] is None and grads["name"] is None


def test_sequence_without_carry_inside_shard_map():
    """`evaluate` with no carry inside `data_parallel_grad`: the zero carry must vary
    over `data` like the observations, or `lax.scan` refuses it."""
    model, _ = make_model()
    xs = jnp.ones((3, 2, 5))
    actions = jnp.zeros((3, 2, 3))

    def loss(m, b):
        lp, ent, v = m.evaluate(b[0], b[1])
        return jnp.mean(lp) + jnp.mean(v) + jnp.mean(ent)

    mesh = lac.data_mesh(1)
    value, _ = lac.data_parallel_grad(loss, mesh, batch_axis=1)(model, (xs, actions))
    np.testing.assert_allclose(value, loss(model, (xs, actions)), rtol=1e-6)
