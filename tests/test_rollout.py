"""The one rollout: `lac.rollout` takes the steps the single-step API takes, for every
model, and the trainer and evaluation are built on it."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac


T, B = 9, 3
EPISODE = 4
RTOL, ATOL = 2e-5, 2e-6


class CountingEnv(lac.Environment):
    """A cheap deterministic environment: the observation follows the action, the
    reward is the action's sum, and every episode is truncated after `EPISODE` steps."""

    @property
    def observation_size(self) -> int:
        return 5

    @property
    def action_size(self) -> int:
        return 3

    @property
    def discrete(self) -> bool:
        return False

    def reset(self, key, params):
        del key, params
        t = jnp.zeros((), jnp.int32)
        return jnp.full((5,), 0.5), t

    def step(self, key, env_state, action, params):
        del key, params
        t = env_state + 1
        obs = jnp.tanh(jnp.tile(action, 2)[:5] + 0.1 * t.astype(jnp.float32))
        return obs, t, jnp.sum(action), jnp.zeros((), bool), t >= EPISODE, {}


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


def _model(kind, key):
    env = CountingEnv()
    model = lac.make_model(env, kind, hidden_features=8, features=12, key=key)
    # perturb the zero-initialised parts so that nothing is trivially zero
    leaves, treedef = jax.tree.flatten(eqx.filter(model, eqx.is_array))
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), model), env


@pytest.mark.parametrize("kind", ["lstm", "mlp"])
def test_rollout_matches_single_steps_and_sequence(getkey, kind):
    model, env = _model(kind, getkey())
    start = lac.start_rollout(model, env, B, key=getkey())
    # environments at different points of their episodes
    start = start._replace(
        env_state=jnp.arange(B, dtype=jnp.int32), episode_start=jnp.array([True, False, False])
    )
    state, traj = lac.rollout(model, env, start, T, key=getkey(), deterministic=True)
    assert traj.obs.shape == (T, B, model.obs_dim)
    assert traj.action.shape == (T, B, model.action_dim)
    # The same steps taken one at a time through the public single-step API.
    st, env_state, obs, flags = start.model_state, start.env_state, start.obs, start.episode_start
    ret = jnp.zeros(B)
    for t in range(T):
        st = model.reset(st, obs.shape, mask=flags)
        (action, log_prob, value), st = model.act(obs, st, key=getkey(), deterministic=True)
        _close(traj.obs[t], obs)
        _close(traj.action[t], action)
        _close(traj.log_prob[t], log_prob)
        _close(traj.value[t], value)
        keys = jax.random.split(getkey(), B)
        final, env_state, reward, _, truncated, _ = jax.vmap(env.step, (0, 0, 0, None))(
            keys, env_state, action, None
        )
        ret = ret + reward
        _close(traj.episode_return[t], ret)
        np.testing.assert_array_equal(traj.truncated[t], truncated)
        _close(traj.final_value[t], jnp.where(truncated, model.value(final, st), 0.0))
        fresh, zero = jax.vmap(env.reset, (0, None))(keys, None)
        obs = jnp.where(truncated[:, None], fresh, final)
        env_state = jnp.where(truncated, zero, env_state)
        ret = jnp.where(truncated, 0.0, ret)
        flags = truncated
    assert bool(traj.truncated.any())  # episodes ended inside the rollout
    _close(state.obs, obs)
    for a, b in zip(
        jax.tree.leaves(model.carry(state.model_state)),
        jax.tree.leaves(model.carry(st)),
        strict=True,
    ):
        _close(a, b)
    # ...and recomputed in training by sequence mode from the stored carry.
    log_prob, _, value = model.evaluate(
        traj.obs, traj.action, traj.initial_carry, traj.episode_start
    )
    _close(log_prob, traj.log_prob)
    _close(value, traj.value)


def test_evaluate_policy_returns_each_first_episode(getkey):
    model, env = _model("lstm", getkey())
    returns = lac.evaluate_policy(model, env, key=getkey(), num_episodes=B, max_steps=100)
    state = lac.start_rollout(model, env, B, key=getkey())
    _, traj = lac.rollout(model, env, state, EPISODE, key=getkey(), deterministic=True)
    # every episode lasts EPISODE steps and the environment is deterministic
    _close(returns, traj.episode_return[EPISODE - 1])
    capped = lac.evaluate_policy(model, env, key=getkey(), num_episodes=B, max_steps=2)
    _close(capped, traj.episode_return[1])


def test_set_carry_puts_a_carry_of_any_batch_shape(getkey):
    model, _ = _model("lstm", getkey())
    state = model.init_state((4,))
    carry = lac.LSTMCarry(jnp.ones((7, 12)), jnp.full((7, 12), 2.0))
    state = model.set_carry(state, carry)
    _close(model.carry(state).c, carry.c)
    assert model.carry(model.set_carry(state, model.zero_carry((7,)))).h.shape == (7, 12)
