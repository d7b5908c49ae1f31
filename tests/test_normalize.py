"""Observation and reward normalisation: the running moments against a two-pass
computation, the trainer's updates of both, and the moments travelling with the model."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_lstm_ac as lac


def _config(**kw):
    base = dict(num_envs=4, num_steps=8, num_minibatches=2, total_steps=96)
    return lac.PPOConfig(**{**base, **kw})


def _trained(getkey, config, updates=2):
    env = lac.MemoryTask(delay=3)
    ppo = lac.PPO(config, env)
    model = lac.make_model(env, "lstm", hidden_features=8, features=8, key=getkey())
    ts = ppo.init(model, key=getkey())
    states, trajs = [ts], []
    for _ in range(updates):
        _, traj, _, _ = ppo.rollout(ts)
        trajs.append(traj)
        ts, _ = ppo.train_step(ts)
        states.append(ts)
    return ppo, states, trajs


def test_running_moments_equal_a_two_pass_computation():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 5.0, (n, 3)).astype(np.float32) for n in (1, 7, 200, 2)]
    moments = lac.RunningMoments((3,))
    for x in batches:
        moments = moments.update(jnp.asarray(x))
    everything = np.concatenate(batches).astype(np.float64)
    np.testing.assert_allclose(moments.mean, everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(moments.var, everything.var(0), rtol=1e-4)
    assert float(moments.count) == len(everything)


def test_fresh_moments_leave_inputs_unchanged_and_normalising_clips():
    x = jnp.asarray([[0.5, -2.0]])
    np.testing.assert_allclose(lac.RunningMoments((2,)).normalize(x), x, rtol=1e-6)
    moments = lac.RunningMoments((2,)).update(jnp.asarray([[0.0, 0.0], [2.0, 2.0]]))
    out = moments.normalize(jnp.asarray([[1.0, 1e6]]))
    np.testing.assert_allclose(out, [[0.0, 10.0]], atol=1e-5)


def test_trainer_moments_are_those_of_every_rollout_observation(getkey):
    _, states, trajs = _trained(getkey, _config())
    first, last = states[0].model.obs_norm, states[-1].model.obs_norm
    assert first is not None and float(first.count) == 0
    assert last is not None
    seen = np.concatenate([np.asarray(t.obs).reshape(-1, t.obs.shape[-1]) for t in trajs])
    assert float(last.count) == len(seen)
    np.testing.assert_allclose(last.mean, seen.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(last.var, seen.var(0), rtol=1e-4, atol=1e-6)


def test_the_optimiser_does_not_train_the_moments(getkey):
    ppo, states, _ = _trained(getkey, _config(), updates=1)
    model = states[-1].model
    assert model.obs_norm is not None
    trainable = jax.tree.leaves(eqx.filter(model, model.trainable()))
    held = {id(x) for x in jax.tree.leaves(model.obs_norm)}
    assert not held & {id(x) for x in trainable}
    grads, _ = ppo.grads(model, ppo.sequences(*_batch_parts(ppo, states[0])))
    assert jax.tree.structure(grads) == jax.tree.structure(eqx.filter(model, model.trainable()))


def _batch_parts(ppo, ts):
    _, traj, last_value, _ = ppo.rollout(ts)
    adv, targets = ppo.advantages(traj, last_value)
    return traj, adv, targets


def test_normalisation_off_leaves_the_model_without_moments(getkey):
    _, states, _ = _trained(getkey, _config(normalize_observations=False), updates=1)
    assert states[-1].model.obs_norm is None
    assert "normalize_observations" not in states[-1].model.metadata


def test_training_rewards_follow_the_discounted_return(getkey):
    config = _config(gamma=0.9, reward_scale=2.0)
    ppo, states, trajs = _trained(getkey, config, updates=2)
    # the reference: every environment's discounted return, restarted after each end of
    # an episode, over both rollouts; the rewards of the second rollout divided by the
    # standard deviation of all returns so far
    acc = np.zeros(config.num_envs)
    returns = []
    for traj in trajs:
        for r, d in zip(np.asarray(traj.reward) * 2.0, np.asarray(traj.done), strict=True):
            acc = acc * 0.9 + r
            returns.append(acc.copy())
            acc = np.where(d, 0.0, acc)
    returns = np.concatenate(returns)
    ts = states[-1]
    np.testing.assert_allclose(ts.return_moments.var, returns.var(), rtol=1e-4)
    np.testing.assert_allclose(ts.discounted_return, acc, rtol=1e-5, atol=1e-6)
    _, rewards = ppo.training_rewards(states[1], trajs[1])
    want = np.asarray(trajs[1].reward) * 2.0 / np.sqrt(returns.var() + 1e-8)
    np.testing.assert_allclose(rewards, want, rtol=1e-4)


def test_moments_travel_with_the_saved_model(getkey, tmp_path):
    _, states, _ = _trained(getkey, _config(), updates=1)
    model = states[-1].model
    lac.save(tmp_path / "m.eqx", model)
    loaded = lac.load(tmp_path / "m.eqx")
    assert loaded.obs_norm is not None
    np.testing.assert_array_equal(loaded.obs_norm.mean, model.obs_norm.mean)
    np.testing.assert_array_equal(loaded.obs_norm.var, model.obs_norm.var)
    x = jax.random.normal(getkey(), (3, model.obs_dim)) * 4.0
    key = getkey()
    act = lac.Actor(model)(x, model.init_state((3,)), key=key, deterministic=True)
    got = lac.Actor(loaded)(x, loaded.init_state((3,)), key=key, deterministic=True)
    np.testing.assert_array_equal(act[0][0], got[0][0])
    # without its moments the same weights act differently on these inputs
    bare = loaded.with_obs_norm(None)
    (_, v_bare), _ = bare(x, bare.init_state((3,)))
    (_, v), _ = loaded(x, loaded.init_state((3,)))
    assert not np.allclose(v_bare, v)


def test_resume_restores_both_normalisers_exactly(tmp_path):
    def config(total):
        return lac.RunConfig(
            env="memory:delay=3",
            model=lac.ModelConfig(hidden_features=8, features=8),
            ppo=dataclasses.replace(_config(), total_steps=total, lr_schedule="constant"),
        )

    straight = lac.fit(config(128), tmp_path / "straight", plot=False)
    lac.fit(config(64), tmp_path / "split", plot=False)
    resumed = lac.resume(tmp_path / "split", total_steps=128, plot=False)
    for a, b in zip(
        jax.tree.leaves(eqx.filter(straight.train_state, eqx.is_array)),
        jax.tree.leaves(eqx.filter(resumed.train_state, eqx.is_array)),
        strict=True,
    ):
        a, b = (jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
                for x in (a, b))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(resumed.train_state.return_moments.count) == 4 * 4 * 8
