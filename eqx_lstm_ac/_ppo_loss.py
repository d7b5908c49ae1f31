"""The PPO objective: generalised advantage estimation and the clipped surrogate loss
of one minibatch of whole sequences. Pure functions of arrays; [`eqx_lstm_ac.PPO`][]
(`_ppo.py`) calls them inside its compiled update."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PyTree

from ._actor_critic import AbstractActorCritic
from ._config import PPOConfig


def compute_gae(
    rewards: Float[Array, "T B"],
    values: Float[Array, "T B"],
    next_values: Float[Array, "T B"],
    terminated: Bool[Array, "T B"],
    truncated: Bool[Array, "T B"],
    gamma: float,
    gae_lambda: float,
) -> tuple[Float[Array, "T B"], Float[Array, "T B"]]:
    r"""Generalised advantage estimation that tells termination from truncation.

    With $d_t$ = terminated or truncated at step $t$,

    $$\delta_t = r_t + \gamma\,(1 - \text{terminated}_t)\,V'_t - V_t, \qquad
    A_t = \delta_t + \gamma\lambda\,(1 - d_t)\,A_{t+1},$$

    where $V'_t$ = `next_values[t]` is the value of the observation step $t$ led to: the
    next step's value inside an episode, the value of the episode's *final* observation
    when it was truncated at $t$ (so the truncated tail is bootstrapped), and anything
    when it terminated (it is multiplied by zero). The recursion never crosses an
    episode boundary.

    **Arguments:**

    - `rewards`, `values`, `next_values`: `(T, B)`.
    - `terminated`, `truncated`: boolean `(T, B)`, the ends of episodes at step `t`.
    - `gamma`, `gae_lambda`: discount and GAE parameter.

    **Returns:**

    `(advantages, returns)`, each `(T, B)`, with `returns = advantages + values`.
    """
    not_terminated = jnp.where(terminated, 0.0, 1.0)
    not_done = jnp.where(terminated | truncated, 0.0, 1.0)
    deltas = rewards + gamma * not_terminated * next_values - values

    def body(next_adv, inp):
        delta, cont = inp
        adv = delta + gamma * gae_lambda * cont * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(body, jnp.zeros_like(rewards[0]), (deltas, not_done), reverse=True)
    return advantages, advantages + values


class Batch(NamedTuple):
    """Training sequences `(L, N, ...)` and their initial carries `(N, ...)`."""

    obs: Array
    action: Array
    log_prob: Array
    value: Array
    advantage: Array
    target: Array
    episode_start: Array
    carry: PyTree


def ppo_loss(
    model: AbstractActorCritic, batch: Batch, config: PPOConfig
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """The PPO loss of one minibatch of sequences.

    Clipped surrogate policy loss, clipped (or plain) squared value loss, minus the
    entropy bonus; the model is run over the sequences with
    `model.evaluate(obs, action, carry=batch.carry, episode_start=batch.episode_start)`.

    **Returns:**

    `(loss, aux)` with `aux` holding the parts of the loss and diagnostics
    (`approx_kl`, `clip_fraction`, `ratio`).
    """
    log_prob, entropy, value = model.evaluate(
        batch.obs, batch.action, batch.carry, batch.episode_start
    )
    log_ratio = log_prob - batch.log_prob
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    if config.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    clipped = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = -jnp.mean(jnp.minimum(ratio * adv, clipped * adv))
    value_loss = (value - batch.target) ** 2
    if config.clip_value is not None:
        v_clipped = batch.value + jnp.clip(
            value - batch.value, -config.clip_value, config.clip_value
        )
        value_loss = jnp.maximum(value_loss, (v_clipped - batch.target) ** 2)
    value_loss = 0.5 * jnp.mean(value_loss)
    ent = jnp.mean(entropy)
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * ent
    aux = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": ent,
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
        "clip_fraction": jnp.mean(jnp.where(jnp.abs(ratio - 1.0) > config.clip_eps, 1.0, 0.0)),
        "ratio": jnp.mean(ratio),
    }
    return loss, aux
