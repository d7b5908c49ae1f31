"""Recurrent PPO: GAE, the stored carry, the first-epoch ratio, and a short training run."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac


GAMMA, LAMBDA = 0.9, 0.8

# A hand-computed example, B = 1, five steps:
#   t = 0  an ordinary step
#   t = 1  the episode is *truncated* (time limit): bootstrap from its final observation
#   t = 2  an ordinary step
#   t = 3  the episode *terminates*: nothing beyond it
#   t = 4  the last step of the rollout: bootstrap from the value after the rollout
REWARDS = [1.0, 0.0, 2.0, 3.0, -1.0]
VALUES = [0.5, 1.0, 1.5, 2.0, 2.5]
FINAL_VALUE_T1 = 10.0  # value of the final observation of the truncated episode
LAST_VALUE = 7.0  # value of the observation after the rollout
# delta_t = r_t + gamma * (1 - terminated_t) * V'_t - V_t
#   d0 = 1 + 0.9 * 1.0 - 0.5 = 1.4       (V'_0 is the next step's value V_1)
#   d1 = 0 + 0.9 * 10.0 - 1.0 = 8.0      (truncated: V' is the final observation's value)
#   d2 = 2 + 0.9 * 2.0 - 1.5 = 2.3
#   d3 = 3 + 0 - 2.0 = 1.0               (terminated: no bootstrap)
#   d4 = -1 + 0.9 * 7.0 - 2.5 = 2.8
# A_t = d_t + gamma * lambda * (1 - done_t) * A_{t+1}, gamma * lambda = 0.72
#   A4 = 2.8; A3 = 1.0 (done); A2 = 2.3 + 0.72 * 1.0 = 3.02; A1 = 8.0 (done);
#   A0 = 1.4 + 0.72 * 8.0 = 7.16
EXPECTED_ADV = [7.16, 8.0, 3.02, 1.0, 2.8]
EXPECTED_RET = [7.66, 9.0, 4.52, 3.0, 5.3]
TERMINATED = [False, False, False, True, False]
TRUNCATED = [False, True, False, False, False]


def _col(values, dtype=jnp.float32):
    return jnp.asarray(values, dtype).reshape(-1, 1)


def test_gae_hand_computed():
    next_values = _col([1.0, FINAL_VALUE_T1, 2.0, 123.0, LAST_VALUE])  # 123: never used
    adv, ret = lac.compute_gae(
        _col(REWARDS),
        _col(VALUES),
        next_values,
        _col(TERMINATED, bool),
        _col(TRUNCATED, bool),
        GAMMA,
        LAMBDA,
    )
    np.testing.assert_allclose(adv[:, 0], EXPECTED_ADV, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ret[:, 0], EXPECTED_RET, rtol=1e-6, atol=1e-6)


def test_gae_of_a_rollout_bootstraps_truncation_only():
    """The trainer's wiring: next values from the following step, the final observation's
    value on truncation, the value after the rollout at the end."""
    env = lac.MemoryTask(delay=2)
    ppo = lac.PPO(
        lac.PPOConfig(num_envs=1, num_steps=5, num_minibatches=1, gamma=GAMMA, gae_lambda=LAMBDA),
        env,
    )
    t, b = 5, 1
    traj = lac.Trajectory(
        obs=jnp.zeros((t, b, 2)),
        action=jnp.zeros((t, b, 1)),
        log_prob=jnp.zeros((t, b)),
        value=_col(VALUES),
        reward=_col(REWARDS),
        terminated=_col(TERMINATED, bool),
        truncated=_col(TRUNCATED, bool),
        episode_start=jnp.zeros((t, b), bool),
        carry=(),
        final_value=_col([0.0, FINAL_VALUE_T1, 0.0, 0.0, 0.0]),
        episode_return=jnp.zeros((t, b)),
    )
    adv, ret = ppo.advantages(traj, jnp.asarray([LAST_VALUE]))
    np.testing.assert_allclose(adv[:, 0], EXPECTED_ADV, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ret[:, 0], EXPECTED_RET, rtol=1e-6, atol=1e-6)


# One small configuration for the tests below, so that they share compilations.
ENV = lac.MemoryTask(delay=4)  # episodes of 5 steps: rollouts of 16 start mid-episode
CONFIG = dict(
    num_envs=32, num_steps=16, num_minibatches=2, total_steps=32 * 16 * 30, learning_rate=3e-3
)
_rollout = eqx.filter_jit(lac.PPO.rollout)


def _small(model="lstm", **config):
    ppo = lac.PPO(lac.PPOConfig(**{**CONFIG, **config}), ENV)
    net = lac.make_model(ENV, model, hidden_features=8, features=8, key=jax.random.key(0))
    return ppo, ppo.init(net, key=jax.random.key(1))


def _at(tree, t):
    return jax.tree.map(lambda x: x[t], tree)


@pytest.fixture(scope="module")
def rollouts():
    """Three consecutive rollouts of the LSTM on the memory task."""
    ppo, ts = _small()
    ts1, *_ = _rollout(ppo, ts)
    ts2, traj, last_value, _ = _rollout(ppo, ts1)
    _, traj3, _, _ = _rollout(ppo, ts2)
    return ppo, ts1, ts2, traj, last_value, traj3


def test_stored_carry_is_the_carry_the_rollout_started_from(rollouts):
    ppo, ts1, ts2, traj, _, traj3 = rollouts
    before = ts1.model.carry(ts1.model_state)  # the carry after the first rollout
    assert float(jnp.abs(before.h).max()) > 0
    np.testing.assert_array_equal(traj.carry.h[0], before.h)
    np.testing.assert_array_equal(traj.carry.c[0], before.c)
    # The carry stored at step t is the carry after step t - 1, before step t's reset.
    (_, _), after = ts1.model.sequence(
        traj.obs[:3], carry=_at(traj.carry, 0), episode_start=traj.episode_start[:3]
    )
    np.testing.assert_allclose(traj.carry.h[3], after.h, atol=1e-6)
    np.testing.assert_allclose(traj.carry.c[3], after.c, atol=1e-6)
    # ... and the next rollout starts from where this one ended.
    np.testing.assert_array_equal(traj3.carry.h[0], ts2.model.carry(ts2.model_state).h)


def test_first_epoch_ratio_is_one(rollouts):
    ppo, ts1, _, traj, last_value, _ = rollouts
    model = ts1.model
    assert bool(traj.episode_start[1:].any())  # episodes start inside the sequences
    assert not bool(traj.episode_start[0].all())  # and the rollout starts mid-episode
    adv, ret = ppo.advantages(traj, last_value)
    for chunk in (None, 4):  # whole rollouts, and truncated BPTT from stored carries
        config = dataclasses.replace(ppo.config, bptt_chunk=chunk)
        batch = lac.PPO(config, ENV).sequences(traj, adv, ret)
        assert batch.obs.shape[:2] == (config.sequence_length, config.num_sequences)
        log_prob, _, value = model.evaluate(
            batch.obs, batch.action, batch.carry, batch.episode_start
        )
        np.testing.assert_allclose(log_prob, batch.log_prob, atol=1e-5)
        np.testing.assert_allclose(value, batch.value, atol=1e-6)
        _, aux = _loss(model, batch, config)
        assert abs(float(aux["ratio"]) - 1.0) < 1e-5
        assert float(aux["approx_kl"]) < 1e-8
        # Zero carries at sequence starts instead of the stored ones would not reproduce it.
        zeros = jax.tree.map(jnp.zeros_like, batch.carry)
        log_prob0, _, _ = model.evaluate(batch.obs, batch.action, zeros, batch.episode_start)
        assert float(jnp.abs(log_prob0 - batch.log_prob).max()) > 1e-4


_loss = eqx.filter_jit(lac.ppo_loss)


@pytest.mark.parametrize("model", ["lstm", "mlp"])
def test_train_step_reports_ratio_one(model):
    ppo, ts = _small(model=model)
    ts, metrics = ppo.train_step(ts)
    assert abs(float(metrics["first_ratio"]) - 1.0) < 1e-5
    assert int(ts.update) == 1
    assert all(bool(jnp.isfinite(v)) for k, v in metrics.items() if k != "mean_return")


def test_training_beats_the_untrained_policy():
    ppo, ts = _small()
    key = jax.random.key(3)
    before = float(lac.evaluate_policy(ts.model, ENV, key=key, num_episodes=256).mean())
    for _ in range(ppo.config.num_updates):
        ts, _ = ppo.train_step(ts)
    after = float(lac.evaluate_policy(ts.model, ENV, key=key, num_episodes=256).mean())
    assert after > before + 0.5, (before, after)
    assert after > 0.7


def test_config_validation():
    with pytest.raises(ValueError, match="divisor"):
        lac.PPOConfig(num_steps=16, bptt_chunk=5)
    for budget in (-1, 0, lac.PPOConfig().steps_per_update - 1):
        with pytest.raises(ValueError, match="less than one update"):
            lac.PPOConfig(total_steps=budget)
    with pytest.raises(ValueError, match="does not divide"):
        lac.PPOConfig(num_envs=6, num_steps=32, num_minibatches=4)  # 6 sequences of 32
    config = lac.PPOConfig(num_envs=4, num_steps=8, num_minibatches=2, total_steps=100)
    assert config.num_updates == 3
    assert lac.PPOConfig.from_dict(config.to_dict()) == config


def test_init_rejects_a_model_of_another_task():
    other = lac.make_model(
        lac.MemoryTask(cue_size=2), hidden_features=8, features=8, key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="does not fit"):
        lac.PPO(lac.PPOConfig(**CONFIG), ENV).init(other, key=jax.random.key(0))


def test_mlp_checkpoint_round_trip(tmp_path):
    model = lac.make_model(ENV, "mlp", hidden_features=8, features=8, key=jax.random.key(0))
    lac.save(tmp_path / "m.eqx", model)
    loaded = lac.load(tmp_path / "m.eqx")
    assert isinstance(loaded, lac.MLPActorCritic)
    assert lac.read_header(tmp_path / "m.eqx")["model"] == "MLPActorCritic"
    x = jnp.ones((3, 2))
    (a, _, v), _ = loaded.act(x, loaded.init_state((3,)), key=jax.random.key(1))
    (a2, _, v2), _ = model.act(x, model.init_state((3,)), key=jax.random.key(1))
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(v, v2)
