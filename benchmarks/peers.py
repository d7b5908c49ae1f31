"""The models measured side by side: ours, the spec's model in flax nnx, and PyTorch.

All three compute the same function: `z = gelu(W_enc x + b_enc)` (tanh approximation),
one LSTM layer (gates `i, f, g, o`), a mean head, a value head and a state-independent
`log_std`. The peers are built from our model's weights (`flax_from_ours`,
`torch_from_ours`), so a test can hold all three to the same outputs.

The flax peer is written from the spec (`jaxdem.rl.models.LSTM.LSTMActorCritic`): an nnx
`Linear` encoder, `nnx.OptimizedLSTMCell`, linear heads, and a `jax.lax.scan` over the cell
in sequence mode. The torch peer uses `torch.nn.LSTM` (its fused CPU kernel).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_lstm_ac as lac


OBS, HIDDEN, LSTM, ACTIONS = 32, 64, 128, 4
"""The reference model's sizes: observations 32, encoder 64, LSTM 128, 4 actions."""

LOG_2PI = math.log(2.0 * math.pi)


def make_ours(*, remat: bool = False, seed: int = 0) -> lac.LSTMActorCritic:
    model, _ = eqx.nn.make_with_state(lac.LSTMActorCritic)(
        observation_space_size=OBS,
        action_space_size=ACTIONS,
        hidden_features=HIDDEN,
        lstm_features=LSTM,
        remat=remat,
        key=jax.random.key(seed),
    )
    # Non-trivial std and value head, so the loss gradients are not degenerate.
    return eqx.tree_at(
        lambda m: m.actor_sigma.log_std,  # type: ignore[union-attr]
        model,
        jnp.linspace(-0.5, 0.5, ACTIONS, dtype=jnp.float32),
    )


# ---------------------------------------------------------------------- the PPO-like loss


def gaussian_terms(mu, log_std, actions):
    """Log-probability of `actions` and entropy of a diagonal Gaussian (last axis)."""
    log_std = log_std.reshape((1,) * (mu.ndim - 1) + log_std.shape[-1:])
    z = (actions - mu) * jnp.exp(-log_std)
    log_prob = jnp.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, axis=-1)
    entropy = jnp.sum(log_std + 0.5 * (1.0 + LOG_2PI)) * jnp.ones(mu.shape[:-1], mu.dtype)
    return log_prob, entropy


def ppo_like(log_prob, entropy, value, returns):
    """Policy term on fixed actions, value squared error, entropy bonus."""
    return -jnp.mean(log_prob) + 0.5 * jnp.mean((value - returns) ** 2) - 0.01 * jnp.mean(entropy)


def ours_loss(model: lac.LSTMActorCritic, xs, actions, returns):
    (pi, value), _ = model.sequence(xs)
    return ppo_like(pi.log_prob(actions), pi.entropy(), value[..., 0], returns)


def ours_forward(model: lac.LSTMActorCritic, xs):
    (pi, value), _ = model.sequence(xs)
    return pi.loc, value  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- flax nnx


def flax_model_class():
    from flax import nnx

    class FlaxLSTMActorCritic(nnx.Module):
        """The spec's model in flax nnx (orthogonal heads, `OptimizedLSTMCell`)."""

        def __init__(self, rngs):
            orth = nnx.initializers.orthogonal
            zeros = nnx.initializers.zeros_init()
            self.encoder = nnx.Linear(
                OBS, HIDDEN, kernel_init=orth(math.sqrt(2.0)), bias_init=zeros, rngs=rngs
            )
            self.cell = nnx.OptimizedLSTMCell(HIDDEN, LSTM, rngs=rngs)
            self.actor_mu = nnx.Linear(LSTM, ACTIONS, kernel_init=orth(1.0), rngs=rngs)
            self.critic = nnx.Linear(LSTM, 1, kernel_init=orth(0.01), rngs=rngs)
            self.log_std = nnx.Param(jnp.zeros((1, ACTIONS), jnp.float32))

        def heads(self, h):
            return self.actor_mu(h), self.critic(h), self.log_std[...]

        def sequence(self, xs):
            z = nnx.gelu(self.encoder(xs))
            carry = self.cell.initialize_carry(z.shape[1:], rngs=nnx.Rngs(0))

            def body(carry, z_t):
                return self.cell(carry, z_t)

            _, hs = jax.lax.scan(body, carry, z)
            return self.heads(hs)

        def step(self, x, carry):
            carry, h = self.cell(carry, nnx.gelu(self.encoder(x)))
            return self.heads(h), carry

    return FlaxLSTMActorCritic


def flax_from_ours(model: lac.LSTMActorCritic):
    """The flax peer with our model's weights; returns `(graphdef, params)`."""
    from flax import nnx

    peer = flax_model_class()(nnx.Rngs(0))
    peer.encoder.kernel[...] = model.encoder.weight.T
    peer.encoder.bias[...] = model.encoder.bias
    peer.cell.dense_i.kernel[...] = model.cell.weight_ih.T
    peer.cell.dense_h.kernel[...] = model.cell.weight_hh.T
    peer.cell.dense_h.bias[...] = model.cell.bias
    peer.actor_mu.kernel[...] = model.actor_mu.weight.T
    peer.actor_mu.bias[...] = model.actor_mu.bias
    peer.critic.kernel[...] = model.critic.weight.T
    peer.critic.bias[...] = model.critic.bias
    peer.log_std[...] = model.actor_sigma.log_std[None]  # type: ignore[union-attr]
    return nnx.split(peer)


def flax_functions(graphdef):
    """Pure functions of the flax peer's parameters: forward and loss of a sequence."""
    from flax import nnx

    def forward(params, xs):
        mu, value, _ = nnx.merge(graphdef, params).sequence(xs)
        return mu, value

    def loss(params, xs, actions, returns):
        mu, value, log_std = nnx.merge(graphdef, params).sequence(xs)
        log_prob, entropy = gaussian_terms(mu, log_std[0], actions)
        return ppo_like(log_prob, entropy, value[..., 0], returns)

    def step(params, x, carry):
        (mu, value, _), carry = nnx.merge(graphdef, params).step(x, carry)
        return mu, value, carry

    return forward, loss, step


# ---------------------------------------------------------------------- PyTorch


def torch_model_class():
    import torch

    class TorchLSTMActorCritic(torch.nn.Module):
        """The same model with `torch.nn.LSTM` (time-major)."""

        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(OBS, HIDDEN)
            self.lstm = torch.nn.LSTM(HIDDEN, LSTM)
            self.actor_mu = torch.nn.Linear(LSTM, ACTIONS)
            self.critic = torch.nn.Linear(LSTM, 1)
            self.log_std = torch.nn.Parameter(torch.zeros(ACTIONS))

        def sequence(self, xs, carry=None):
            z = torch.nn.functional.gelu(self.encoder(xs), approximate="tanh")
            hs, carry = self.lstm(z, carry)
            return self.actor_mu(hs), self.critic(hs), carry

        def loss(self, xs, actions, returns):
            mu, value, _ = self.sequence(xs)
            log_std = self.log_std
            z = (actions - mu) * torch.exp(-log_std)
            log_prob = torch.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, dim=-1)
            entropy = torch.sum(log_std + 0.5 * (1.0 + LOG_2PI))
            return -log_prob.mean() + 0.5 * ((value[..., 0] - returns) ** 2).mean() - 0.01 * entropy

        def act(self, x, carry):
            """One rollout step: sample an action, its log-probability, the value."""
            mu, value, carry = self.sequence(x[None], carry)
            mu, value = mu[0], value[0, :, 0]
            std = torch.exp(self.log_std)
            action = mu + std * torch.randn_like(mu)
            z = (action - mu) / std
            log_prob = torch.sum(-0.5 * z * z - self.log_std - 0.5 * LOG_2PI, dim=-1)
            return (action, log_prob, value), carry

    return TorchLSTMActorCritic


def torch_from_ours(model: lac.LSTMActorCritic):
    import torch

    peer = torch_model_class()()

    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))

    with torch.no_grad():
        peer.encoder.weight.copy_(t(model.encoder.weight))
        peer.encoder.bias.copy_(t(model.encoder.bias))
        peer.lstm.weight_ih_l0.copy_(t(model.cell.weight_ih))
        peer.lstm.weight_hh_l0.copy_(t(model.cell.weight_hh))
        assert model.cell.bias is not None
        peer.lstm.bias_ih_l0.copy_(t(model.cell.bias))
        peer.lstm.bias_hh_l0.zero_()
        peer.actor_mu.weight.copy_(t(model.actor_mu.weight))
        peer.actor_mu.bias.copy_(t(model.actor_mu.bias))
        peer.critic.weight.copy_(t(model.critic.weight))
        peer.critic.bias.copy_(t(model.critic.bias))
        peer.log_std.copy_(t(model.actor_sigma.log_std))  # type: ignore[union-attr]
    return peer


# ---------------------------------------------------------------------- FLOPs


def model_flops(t_len: int, batch: int, backward: bool) -> float:
    """Matmul FLOPs of the model on `(T, B)` observations (forward, or forward and
    backward). The backward pass costs two matmuls per forward one (input and weight
    gradients), less the unneeded gradient of the observations."""
    per_row_matmuls = [
        (OBS, HIDDEN),
        (HIDDEN, 4 * LSTM),
        (LSTM, 4 * LSTM),
        (LSTM, ACTIONS),
        (LSTM, 1),
    ]
    fwd = sum(2.0 * a * b for a, b in per_row_matmuls)
    total = fwd
    if backward:
        total += 2.0 * fwd - 2.0 * OBS * HIDDEN
    return total * t_len * batch
