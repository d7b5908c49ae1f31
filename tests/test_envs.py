"""The memory task, the observation-hiding wrapper and the gymnax adapter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac


def _episode(env, key, action_fn):
    obs, state = env.reset(key, None)
    observations, rewards, flags = [obs], [], []
    for t in range(100):
        obs, state, reward, terminated, truncated, _ = env.step(key, state, action_fn(t), None)
        rewards.append(float(reward))
        flags.append((bool(terminated), bool(truncated)))
        if terminated or truncated:
            return observations, rewards, flags, state
        observations.append(obs)
    raise AssertionError("the episode did not end")


def test_memory_task_cue_query_and_reward():
    env = lac.MemoryTask(delay=4, cue_size=2)
    assert (env.observation_size, env.action_size, env.discrete) == (3, 2, False)
    obs0, state = env.reset(jax.random.key(0), None)
    target = np.asarray(state.target)
    act = jnp.asarray(target, jnp.float32)
    observations, rewards, flags, _ = _episode(env, jax.random.key(0), lambda t: act)
    assert len(observations) == 5  # delay + 1 steps
    np.testing.assert_array_equal(observations[0], np.r_[target, 0.0])  # the cue
    for obs in observations[1:4]:
        np.testing.assert_array_equal(obs, np.zeros(3))  # nothing
    np.testing.assert_array_equal(observations[4], np.r_[0.0, 0.0, 1.0])  # the query
    assert rewards == [0.0, 0.0, 0.0, 0.0, 1.0]  # acting on the cue is optimal
    assert flags[-1] == (True, False) and all(f == (False, False) for f in flags[:-1])


def test_memory_task_memoryless_policy_is_at_chance():
    """Whatever fixed action a memoryless policy takes at the query, the two targets of
    each coordinate cancel: the expected return is exactly the chance return 0."""
    env = lac.MemoryTask(delay=2)
    returns = []
    for sign in (-1.0, 1.0):
        state = lac.MemoryState(jnp.asarray([sign]), jnp.asarray(2, jnp.int32))
        for a in (-1.0, 0.3, 1.0):
            _, _, reward, terminated, _, _ = env.step(
                jax.random.key(0), state, jnp.asarray([a]), None
            )
            assert bool(terminated)
            returns.append((a, sign * a, float(reward)))
    for _, expected, got in returns:
        assert got == pytest.approx(expected)
    by_action: dict[float, list[float]] = {}
    for a, _, got in returns:
        by_action.setdefault(a, []).append(got)
    assert all(sum(v) / 2 == pytest.approx(env.chance_return) for v in by_action.values())


def test_memory_task_rejects_bad_sizes():
    with pytest.raises(ValueError, match="delay"):
        lac.MemoryTask(delay=0)
    with pytest.raises(ValueError, match="cue_size"):
        lac.MemoryTask(cue_size=0)


def test_hide_observation():
    env = lac.HideObservation(lac.MemoryTask(delay=2, cue_size=2), (0,))
    assert env.observation_size == 2
    obs, state = env.reset(jax.random.key(0), None)
    np.testing.assert_array_equal(obs, np.r_[np.asarray(state.target)[1], 0.0])
    with pytest.raises(ValueError, match="indices 0..2"):
        lac.HideObservation(lac.MemoryTask(cue_size=2), (3,))
    with pytest.raises(ValueError, match="every"):
        lac.HideObservation(lac.MemoryTask(), (0, 1))


def test_make_env():
    assert isinstance(lac.make_env("memory"), lac.MemoryTask)
    env = lac.make_env("memory:delay=5,cue_size=2", hide=(2,))
    assert isinstance(env, lac.HideObservation) and env.observation_size == 2
    with pytest.raises(ValueError, match="Unknown task"):
        lac.make_env("atari")
    with pytest.raises(ValueError, match="Unknown option"):
        lac.make_env("memory:speed=3")


def test_gymnax_cartpole_hidden_velocities_truncation_and_training():
    pytest.importorskip("gymnax")
    env = lac.make_env("gymnax:CartPole-v1", hide=(1, 3))
    assert (env.observation_size, env.action_size, env.discrete) == (2, 2, True)
    inner = env.env
    assert isinstance(inner, lac.GymnaxEnv)
    with jax.numpy_dtype_promotion("standard"):  # gymnax mixes dtypes freely
        _, state = env.reset(jax.random.key(0), env.default_params)
        # One step before the time limit: the step is truncated, not terminated.
        limit = env.default_params.max_steps_in_episode
        state = state.replace(time=jnp.asarray(limit - 1, jnp.int32))
        obs, _, reward, terminated, truncated, _ = env.step(
            jax.random.key(1), state, jnp.asarray(1, jnp.int32), env.default_params
        )
        assert obs.shape == (2,) and float(reward) == 1.0
        assert (bool(terminated), bool(truncated)) == (False, True)
        config = lac.PPOConfig(num_envs=4, num_steps=8, num_minibatches=2)
        ppo = lac.PPO(config, env)
        model = lac.make_model(env, "lstm", hidden_features=8, features=8, key=jax.random.key(0))
        ts, metrics = ppo.train_step(ppo.init(model, key=jax.random.key(1)))
        assert abs(float(metrics["first_ratio"]) - 1.0) < 1e-5


def test_gymnax_pendulum_is_continuous():
    pytest.importorskip("gymnax")
    env = lac.GymnaxEnv("Pendulum-v1")
    assert (env.observation_size, env.action_size, env.discrete) == (3, 1, False)
    space = env.action_space
    assert isinstance(space, lac.BoxSpace) and (space.x_min, space.x_max) == (-2.0, 2.0)


def test_box_space_of_a_box():
    same = lac.GymnaxEnv.__module__  # the adapter's helper lives beside it
    from eqx_lstm_ac._envs import box_space

    assert same == "eqx_lstm_ac._envs"
    assert box_space(-2.0, 2.0, (3,), "t") == lac.BoxSpace(-2.0, 2.0)
    per = box_space(np.array([-1.0, 0.0]), np.array([1.0, 5.0]), (2,), "t")
    assert per == lac.BoxSpace([-1.0, 0.0], [1.0, 5.0])
    with pytest.raises(ValueError, match="1-D Box"):
        box_space(0.0, 1.0, (2, 2), "t")
    with pytest.raises(ValueError, match="bounded"):
        box_space(-np.inf, 1.0, (2,), "t")


def test_gymnax_grid_observations_are_flattened():
    pytest.importorskip("gymnax")
    env = lac.make_env("gymnax:Catch-bsuite")
    assert env.observation_size == 50  # a 10 x 5 grid
    obs, state = env.reset(jax.random.key(0), env.default_params)
    assert obs.shape == (50,) and obs.dtype == jnp.float32
    with jax.numpy_dtype_promotion("standard"):
        obs, *_ = env.step(jax.random.key(1), state, jnp.asarray(1), env.default_params)
    assert obs.shape == (50,)
    model = lac.make_model(env, "lstm", hidden_features=8, features=8, key=jax.random.key(0))
    (_, value), _ = model(obs, model.init_state())
    assert value.shape == (1,)
