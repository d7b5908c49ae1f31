"""The run directory from Python: fit, resume, training-state checkpoints, and the
folders a run refuses to write into."""

import dataclasses

import equinox as eqx
import jax
import numpy as np
import pytest

import eqx_lstm_ac as lac


def _config(total_steps, **ppo):
    """A tiny run: 32 steps per update on the memory task with a delay of 3."""
    return lac.RunConfig(
        env="memory:delay=3",
        model=lac.ModelConfig(hidden_features=8, features=8),
        ppo=lac.PPOConfig(
            num_envs=4,
            num_steps=8,
            num_minibatches=2,
            total_steps=total_steps,
            lr_schedule="constant",
            **ppo,
        ),
    )


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_array))]


def test_fit_then_resume_equals_one_run(tmp_path):
    straight = lac.fit(_config(128), tmp_path / "straight", plot=False)
    lac.fit(_config(64), tmp_path / "split", plot=False)
    resumed = lac.resume(tmp_path / "split", total_steps=128, plot=False)
    assert resumed.start_update == 2 and [r["update"] for r in resumed.rows] == [1, 2, 3, 4]
    for a, b in zip(_leaves(straight.model), _leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_train_state_round_trip_by_field(tmp_path):
    config = _config(64)
    result = lac.fit(config, tmp_path / "run", plot=False)
    ts = result.train_state
    path = lac.save_train_state(tmp_path / "ckpt", ts, config)
    like = lac.PPO(config.ppo, result.env).init(result.model, key=jax.random.key(5))
    back = lac.load_train_state(path, like)
    for field in dataclasses.fields(ts):
        a, b = getattr(ts, field.name), getattr(back, field.name)
        if field.name == "key":
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        for x, y in zip(_leaves(a), _leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    # a state of another run (other sizes) is refused, not half-read
    other = dataclasses.replace(config, ppo=dataclasses.replace(config.ppo, num_envs=8))
    wrong = lac.PPO(other.ppo, result.env).init(result.model, key=jax.random.key(5))
    with pytest.raises(ValueError, match="does not hold this run|disagree"):
        lac.load_train_state(path, wrong)


def test_a_run_never_writes_into_a_folder_it_did_not_make(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "model.eqx").write_bytes(b"my own file")
    with pytest.raises(ValueError, match="not empty"):
        lac.fit(_config(32), foreign, plot=False)
    assert (foreign / "model.eqx").read_bytes() == b"my own file"
    assert sorted(p.name for p in foreign.iterdir()) == ["model.eqx"]


def test_a_locked_run_directory_is_refused(tmp_path):
    run = lac.RunDir(tmp_path / "run")
    with run.lock():
        with pytest.raises(ValueError, match="in use by another run"):
            with lac.RunDir(tmp_path / "run").lock():
                pass
    with run.lock():  # released again
        pass


def test_config_round_trips_and_resume_refuses_fixed_changes():
    config = _config(64)
    assert lac.RunConfig.from_dict(config.to_dict()) == config
    from eqx_lstm_ac._config import with_settings

    longer = with_settings(config, {"ppo.total_steps": 128}, resuming=True)
    assert longer.ppo.total_steps == 128
    with pytest.raises(ValueError, match="--lr cannot change"):
        with_settings(config, {"ppo.learning_rate": 0.5}, resuming=True)
    with pytest.raises(ValueError, match="does not match the task"):
        with_settings(config, {"seed": 3}, resuming=True)


def test_every_setting_is_a_command_line_option():
    from eqx_lstm_ac._cli import _parser
    from eqx_lstm_ac._config import flag_of, settable_fields

    train = _parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {s for action in train._actions for s in action.option_strings}
    for _, field in settable_fields():
        assert f"--{flag_of(field)}" in flags
