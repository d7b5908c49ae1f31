"""Runs that lose nothing: divergence, SIGTERM, a kill before the first checkpoint, a
corrupt newest checkpoint, leftover temporary files, a changed budget, float64 inputs,
and several seeds in one group directory."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import equinox as eqx
import jax
import numpy as np
import pytest

import eqx_lstm_ac as lac

from .test_cli import _one_line_error, _run, TINY
from .test_run import _config


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]


def _all_finite(path):
    return all(np.isfinite(x).all() for x in _leaves(lac.load(path)))


def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--lr", "5", "--checkpoint-every", "1", "--total-steps", "2048"]
    code, _, err = _run(capsys, *args, "--out", str(run))
    lines = [line for line in err.strip().splitlines() if "error" in line]
    _one_line_error(code, lines[-1], "produced a non-finite loss or parameters", "--lr 5")
    ckpts = lac.RunDir(run).checkpoints()
    assert ckpts, "the finite checkpoints before the divergence are kept"
    assert all(_all_finite(c / "model.eqx") for c in ckpts)
    assert _all_finite(run / "model.eqx")
    last = int(ckpts[-1].name.split("_")[1])
    rows = lac.RunDir(run).read_metrics()
    assert max(r["update"] for r in rows) == last  # no row of the failed update
    assert all(np.isfinite(r["loss"]) for r in rows)
    # resumable: it loads and runs into the same divergence at the same update
    with pytest.raises(lac.DivergenceError) as exc:
        lac.resume(run, plot=False)
    assert exc.value.update == last + 1 and exc.value.checkpoint is not None


def test_sigterm_checkpoints_as_ctrl_c_does(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "eqx_lstm_ac", "train", *TINY, "--total-steps", "1e7"]
    proc = subprocess.Popen(
        cmd + ["--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if len(lac.RunDir(run).read_metrics()) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    ckpt = lac.RunDir(run).checkpoints()[-1]
    rows = lac.RunDir(run).read_metrics()
    assert int(ckpt.name.split("_")[1]) == max(r["update"] for r in rows)
    per_update = 4 * 8
    done = int(ckpt.name.split("_")[1])
    result = lac.resume(run, total_steps=(done + 1) * per_update, plot=False)
    assert result.start_update == done and result.rows[-1]["update"] == done + 1


def test_a_signal_while_an_update_is_recorded_keeps_state_and_metrics_together(
    tmp_path, monkeypatch
):
    # SIGTERM arrives while the metrics row of update 2 is being written: the run stops
    # after that update with its row and a checkpoint of it, never one without the other
    append = lac.RunDir.append_metrics

    def append_then_signal(self, row):
        if row["update"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        append(self, row)

    monkeypatch.setattr(lac.RunDir, "append_metrics", append_then_signal)
    result = lac.fit(_config(32 * 50), tmp_path / "run", plot=False)
    assert result.interrupted
    rows = lac.RunDir(tmp_path / "run").read_metrics()
    ckpt = lac.RunDir(tmp_path / "run").checkpoints()[-1]
    assert [r["update"] for r in rows] == [1, 2]
    assert int(ckpt.name.split("_")[1]) == 2 == int(result.train_state.update)


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path):
    straight = lac.fit(_config(64), tmp_path / "straight", plot=False)
    cut = tmp_path / "cut"
    lac.fit(_config(64), cut, plot=False)
    for ckpt in lac.RunDir(cut).checkpoints():  # as if killed before the first checkpoint
        for f in ckpt.iterdir():
            f.unlink()
        ckpt.rmdir()
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        lac.fit(_config(64), cut, plot=False)
    with pytest.warns(RuntimeWarning, match="no usable checkpoint; training it again"):
        again = lac.resume(cut, plot=False)
    assert again.start_update == 0
    for a, b in zip(_leaves(straight.model), _leaves(again.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path):
    run = tmp_path / "run"
    lac.fit(dataclasses_replace(_config(96), checkpoint_every=1), run, plot=False)
    ckpts = lac.RunDir(run).checkpoints()
    newest = ckpts[-1] / "trainer.eqx"
    newest.write_bytes(newest.read_bytes()[:-7])
    with pytest.warns(RuntimeWarning, match=f"skipped {ckpts[-1].name}: .*checksum"):
        result = lac.resume(run, total_steps=128, plot=False)
    assert result.start_update == int(ckpts[-2].name.split("_")[1]) == 2


def dataclasses_replace(config, **kw):
    import dataclasses

    return dataclasses.replace(config, **kw)


def test_leftover_temporary_files_are_removed_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    lac.fit(_config(64), run, plot=False)
    leftovers = [run / ".model.eqx.x1y2.tmp", run / "checkpoints" / ".update_000009.abcd"]
    leftovers[0].write_bytes(b"half")
    leftovers[1].mkdir()
    (leftovers[1] / "model.eqx").write_bytes(b"half")
    mine = run / "notes.txt"
    mine.write_text("keep me")
    lac.resume(run, total_steps=96, plot=False)
    assert not any(p.exists() for p in leftovers)
    assert mine.read_text() == "keep me"


def test_a_new_budget_on_resume_warns_that_the_schedule_changes(tmp_path):
    run = tmp_path / "run"
    config = dataclasses_replace(_config(64), ppo=lac.PPOConfig(
        num_envs=4, num_steps=8, num_minibatches=2, total_steps=64, lr_schedule="linear"
    ))
    lac.fit(config, run, plot=False)
    with pytest.warns(RuntimeWarning, match="learning-rate schedule now runs over 4 updates"):
        lac.resume(run, total_steps=128, plot=False)
    constant = tmp_path / "constant"
    lac.fit(_config(64), constant, plot=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lac.resume(constant, total_steps=128, plot=False)


def test_budgets_below_one_update_are_refused_in_one_line(tmp_path, capsys):
    for budget in ("0", "31"):
        code, _, err = _run(capsys, "train", *TINY, "--total-steps", budget, "--out",
                            str(tmp_path / budget))
        _one_line_error(code, err, "less than one update")
        assert not (tmp_path / budget).exists()


def test_unwritable_places_get_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = _run(capsys, "train", *TINY, "--total-steps", "32", "--out", str(afile))
    _one_line_error(code, err, "not a directory")
    code, _, err = _run(
        capsys, "train", *TINY, "--total-steps", "32", "--out", str(afile / "run")
    )
    _one_line_error(code, err)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        code, _, err = _run(capsys, "train", *TINY, "--total-steps", "32", "--out", str(ro / "r"))
        _one_line_error(code, err, "Permission denied")
    with pytest.raises(ValueError, match="is a directory"):
        lac.load(tmp_path)


def test_float64_inputs_under_x64_train_and_act():
    code = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp, numpy as np, eqx_lstm_ac as lac
env = lac.MemoryTask(delay=3)
for kind in ("lstm", "mlp"):
    m = lac.make_model(env, kind, hidden_features=8, features=8, key=jax.random.key(0))
    assert {str(x.dtype) for x in jax.tree.leaves(m) if hasattr(x, "dtype")} == {"float32"}
    xs = jnp.ones((3, 2, env.observation_size), jnp.float64)
    (pi, v), _ = m.sequence(xs)
    (pi1, v1), _ = m(xs[0], m.init_state((2,)))
    assert v.dtype == v1.dtype == jnp.float32
    np.testing.assert_allclose(v[0], v1, rtol=1e-5)
config = lac.PPOConfig(num_envs=4, num_steps=8, num_minibatches=2, total_steps=64)
model, history = lac.train(env, config, key=jax.random.key(0))
assert np.isfinite(history[-1]["loss"])
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_seeds_train_together_into_a_group_directory_and_resume(tmp_path, capsys):
    group = tmp_path / "group"
    results = lac.fit(_config(64), group, seeds=[2, 5], plot=True)
    assert [r.config.seed for r in results] == [2, 5]
    assert json.loads((group / "seeds.json").read_text())["seeds"] == [2, 5]
    assert (group / "learning_curve.png").is_file()
    for r in results:
        assert r.run_dir.path == group / f"seed_{r.config.seed}"
        alone = lac.fit(
            dataclasses_replace(_config(64), seed=r.config.seed),
            tmp_path / f"alone{r.config.seed}",
            plot=False,
        )
        for a, b in zip(_leaves(r.model), _leaves(alone.model), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # each seed's directory is a run of its own: it loads and evaluates alone
        assert lac.load(r.run_dir.model_file).metadata == alone.model.metadata
    more = lac.resume(group, total_steps=96, plot=False)
    assert [r.start_update for r in more] == [2, 2]
    assert [len(r.rows) for r in more] == [3, 3]
    # and from the command line
    code, out, _ = _run(capsys, "train", *TINY, "--total-steps", "64", "--seeds", "0,1",
                        "--out", str(tmp_path / "cli"))
    assert code == 0 and "2 seeds at once" in out and "seed 1" in out
    code, _, err = _run(capsys, "train", *TINY, "--seeds", "0,1", "--seed", "3")
    _one_line_error(code, err, "--seed or --seeds")
