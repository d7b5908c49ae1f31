"""A model is one class and one entry in `lac.MODELS`: a third model, written here against
`lac.AbstractActorCritic` alone, trains, saves, loads and evaluates with no other change."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac
from eqx_lstm_ac._action_spaces import _lift
from eqx_lstm_ac._actor_critic import metadata_of
from eqx_lstm_ac._heads import (
    apply_linear,
    check_options,
    init_heads,
    orthogonal_linear,
)


class EMAActorCritic(lac.AbstractActorCritic):
    """A toy memory: the carry is an exponential moving average of encoded observations."""

    encoder: eqx.nn.Linear
    actor_mu: eqx.nn.Linear
    actor_sigma: lac.LogStdParameter | lac.SoftplusStdHead | None
    critic: eqx.nn.Linear
    bij: object
    carry_index: eqx.nn.StateIndex
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    features: int = eqx.field(static=True)
    decay: float = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)

    def __init__(
        self,
        observation_space_size: int,
        action_space_size: int,
        features: int = 16,
        decay: float = 0.5,
        action_space=None,
        discrete: bool = False,
        carry_shape: tuple[int, ...] = (),
        *,
        key,
    ):
        check_options(
            {"observation_space_size": observation_space_size, "features": features},
            {"discrete": discrete},
            tuple(carry_shape),
            action_space,
        )
        k_enc, *k_heads = jax.random.split(key, 4)
        self.obs_dim, self.action_dim = observation_space_size, action_space_size
        self.features, self.decay, self.discrete = features, float(decay), discrete
        self.encoder = orthogonal_linear(k_enc, observation_space_size, features, 1.0)
        self.actor_mu, self.actor_sigma, self.critic = init_heads(
            tuple(k_heads), features, action_space_size, discrete, False
        )
        self.bij = None if discrete else _lift(action_space or lac.FreeSpace())
        self.carry_index = eqx.nn.StateIndex(self.zero_carry(tuple(carry_shape)))
        self.obs_norm = None

    @property
    def metadata(self):
        return metadata_of(self, features=self.features, decay=self.decay)

    @classmethod
    def make(
        cls,
        observation_space_size,
        action_space_size,
        *,
        hidden_features,
        features,
        activation,
        action_space,
        discrete,
        key,
    ):
        del hidden_features, activation
        model, _ = eqx.nn.make_with_state(cls)(
            observation_space_size,
            action_space_size,
            features=features,
            action_space=action_space,
            discrete=discrete,
            key=key,
        )
        return model

    def zero_carry(self, batch_shape=()):
        return jnp.zeros(tuple(batch_shape) + (self.features,))

    def torso(self, x, carry):
        m = self.decay * carry + (1.0 - self.decay) * jnp.tanh(apply_linear(self.encoder, x))
        return m, m

    def sequence_readout(self, xs, carry, episode_start):
        if carry is None:
            carry = self.zero_carry((xs.shape[1],))
        if episode_start is None:
            episode_start = jnp.zeros(xs.shape[:2], bool)

        def body(m, inp):
            x, start = inp
            m, _ = self.torso(x, jnp.where(start[:, None], 0.0, m))
            return m, m

        carry, ms = jax.lax.scan(body, carry, (xs, episode_start))
        return self.readout(ms), carry


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(lac.MODELS, "ema", EMAActorCritic)


def test_a_third_model_trains_saves_loads_and_evaluates(registered, tmp_path, getkey):
    env = lac.MemoryTask(delay=3)
    model = lac.make_model(env, "ema", features=8, key=getkey())
    assert isinstance(model, EMAActorCritic)
    config = lac.PPOConfig(num_envs=4, num_steps=8, total_steps=64, num_minibatches=2)
    ppo = lac.PPO(config, env)
    ts = ppo.init(model, key=getkey())
    ts, metrics = ppo.train_step(ts)
    assert np.isfinite(float(metrics["loss"]))
    assert float(metrics["first_ratio"]) == pytest.approx(1.0, abs=1e-5)
    trained = ts.model
    assert not np.array_equal(trained.encoder.weight, model.encoder.weight)
    # the carry is per environment and advanced by the rollout
    assert ts.model_state.get(trained.carry_index).shape == (4, 8)

    lac.save(tmp_path / "ema.eqx", trained)
    loaded = lac.load(tmp_path / "ema.eqx")
    assert type(loaded) is EMAActorCritic and loaded.metadata == trained.metadata
    xs = jax.random.normal(getkey(), (5, 2, env.observation_size))
    starts = jnp.zeros((5, 2), bool).at[2, 1].set(True)
    (pi_a, v_a), _ = trained.sequence(xs, episode_start=starts)
    (pi_b, v_b), _ = loaded.sequence(xs, episode_start=starts)
    np.testing.assert_array_equal(v_a, v_b)

    # single-step mode with a reset equals sequence mode
    state = loaded.init_state((2,))
    for t in range(5):
        state = loaded.reset(state, xs[t].shape, mask=starts[t])
        (_, v), state = loaded(xs[t], state)
        np.testing.assert_allclose(v, v_b[t], rtol=1e-5, atol=1e-6)
    returns = lac.evaluate_policy(loaded, env, key=getkey(), num_episodes=4)
    assert returns.shape == (4,) and bool(jnp.all(jnp.isfinite(returns)))


def test_unregistered_models_are_refused(tmp_path, getkey):
    with pytest.raises(ValueError, match="Unknown model 'ema'"):
        lac.make_model(lac.MemoryTask(), "ema", key=getkey())
    model = EMAActorCritic.make(
        2,
        1,
        hidden_features=1,
        features=4,
        activation="gelu",
        action_space=None,
        discrete=False,
        key=getkey(),
    )
    with pytest.raises(TypeError, match="Unknown model 'EMAActorCritic'"):
        lac.save(tmp_path / "x.eqx", model)
