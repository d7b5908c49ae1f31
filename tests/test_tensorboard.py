"""TensorBoard events of a run, read back with TensorBoard's own reader: every metric of
`metrics.jsonl` at its environment step, each step once after a resume, one log per
seed, and a clear error before anything is written when tensorboardX is missing."""

import dataclasses
import json

import numpy as np
import pytest

import eqx_lstm_ac as lac

from .test_run import _config


event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
)
pytest.importorskip("tensorboardX")

TAGS = ("mean_return", "loss", "policy_loss", "value_loss", "entropy", "learning_rate")


def _scalars(path) -> dict[str, dict[int, float]]:
    acc = event_accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert len(set(steps)) == len(steps), f"{tag}: a step logged twice: {steps}"
        out[tag] = {e.step: e.value for e in events}
    return out


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_events_match_metrics(run):
    got = _scalars(run / "tensorboard")
    rows = _rows(run)
    for name in (*TAGS, "steps_per_second", "episodes"):
        tag = f"train/{name}"
        want = {r["env_steps"]: r[name] for r in rows if r.get(name) is not None}
        assert want, name
        assert sorted(got[tag]) == sorted(want), tag
        np.testing.assert_allclose(
            [got[tag][s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=1e-6
        )


def test_events_hold_every_metric_of_every_update(tmp_path):
    run = tmp_path / "run"
    lac.fit(_config(4 * 32), run, tensorboard=True, plot=False)
    _assert_events_match_metrics(run)
    assert len(_rows(run)) == 4


class _Crash(Exception):
    pass


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """A process that dies after logging update 3 but checkpointing only update 2: the
    resumed run trains update 3 again, and its events replace the orphaned ones."""
    run = tmp_path / "run"

    def crash_at_3(row):
        if row["update"] == 3:
            raise _Crash

    config = dataclasses.replace(_config(4 * 32), checkpoint_every=2)
    with pytest.raises(_Crash):
        lac.fit(config, run, tensorboard=True, plot=False, on_update=crash_at_3)
    assert [r["update"] for r in _rows(run)] == [1, 2, 3]
    assert max(_scalars(run / "tensorboard")["train/loss"]) == 3 * 32
    lac.resume(run, total_steps=5 * 32, tensorboard=True, plot=False)
    rows = _rows(run)
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5]
    _assert_events_match_metrics(run)


def test_one_log_per_seed(tmp_path):
    group = tmp_path / "group"
    lac.fit(_config(2 * 32), group, seeds=[3, 4], tensorboard=True, plot=False)
    returns = []
    for seed in (3, 4):
        run = group / f"seed_{seed}"
        _assert_events_match_metrics(run)
        returns.append(_scalars(run / "tensorboard")["train/loss"])
    assert returns[0] != returns[1]  # each seed's own values, not the first seed's twice
    assert not (group / "tensorboard").exists()


def test_missing_tensorboardx_is_a_clear_error_before_anything_is_written(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("eqx_lstm_ac._run.tensorboard_available", lambda: False)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"tensorboard=True needs tensorboardX"):
        lac.fit(_config(2 * 32), run, tensorboard=True)
    assert not run.exists()
    lac.fit(_config(32), run, plot=False)  # the default: no events without the writer
    assert not (run / "tensorboard").exists()
    assert len(_rows(run)) == 1


def test_the_command_line_writes_and_names_the_log_unless_told_not_to(tmp_path, capsys):
    from .test_cli import _run, TINY

    on, off = tmp_path / "on", tmp_path / "off"
    code, out, _ = _run(capsys, "train", *TINY, "--total-steps", "64", "--out", str(on))
    assert code == 0, out
    assert f"tensorboard  {on / 'tensorboard'}" in out
    _assert_events_match_metrics(on)
    code, out, _ = _run(
        capsys, "train", *TINY, "--total-steps", "64", "--no-tensorboard", "--out", str(off)
    )
    assert code == 0, out
    assert "tensorboard" not in out
    assert not (off / "tensorboard").exists()
