"""Several seeds in one compiled program: each run equals the run of that seed alone."""

import jax
import numpy as np
import pytest

import eqx_lstm_ac as lac


ENV = lac.MemoryTask(delay=3)
CONFIG = lac.PPOConfig(num_envs=4, num_steps=8, num_minibatches=2, total_steps=96)


def _arrays(model):
    return [np.asarray(x) for x in jax.tree.leaves(model) if hasattr(x, "shape")]


def test_seeds_in_one_program_equal_separate_runs():
    models, histories = lac.train(ENV, CONFIG, seeds=[3, 0, 7])
    assert len(models) == len(histories) == 3
    alone = {}
    for seed, model, history in zip([3, 0, 7], models, histories, strict=True):
        single, single_history = lac.train(ENV, CONFIG, key=jax.random.key(seed))
        alone[seed] = single
        for a, b in zip(_arrays(model), _arrays(single), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert [r["env_steps"] for r in history] == [r["env_steps"] for r in single_history]
        for name in ("loss", "entropy", "mean_return"):
            np.testing.assert_allclose(
                [r[name] for r in history], [r[name] for r in single_history], rtol=1e-4
            )
    # the runs differ from one another, so the comparison is not of one run thrice
    assert not np.allclose(_arrays(alone[3])[0], _arrays(alone[0])[0])


def test_stack_and_unstack_are_inverse():
    ppo = lac.PPO(CONFIG, ENV)
    ts = ppo.init_seeds([0, 1], lambda key: lac.make_model(ENV, key=key))
    assert ts.obs.shape == (2, CONFIG.num_envs, ENV.observation_size)
    again = lac.stack([lac.unstack(ts, 0), lac.unstack(ts, 1)])
    for a, b in zip(jax.tree.leaves(ts), jax.tree.leaves(again), strict=True):
        if hasattr(a, "shape") and not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(a, b)


def test_train_needs_a_key_or_seeds():
    with pytest.raises(ValueError, match="key= or seeds="):
        lac.train(ENV, CONFIG)
    with pytest.raises(ValueError, match="at least one seed"):
        lac.train(ENV, CONFIG, seeds=[])
