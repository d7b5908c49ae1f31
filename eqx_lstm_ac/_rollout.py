"""`rollout`: many environment steps fused into one compiled `jax.lax.scan`."""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._model import _act, LSTMActorCritic, LSTMCarry


class Rollout(NamedTuple):
    """What [`eqx_lstm_ac.rollout`][] collected, time-major: `(T, B, ...)`.

    - `observations`: `(T, B, obs_dim)`, the observation each action was chosen from.
    - `episode_start`: `(T, B)` booleans, true where `observations[t, b]` begins an
      episode (the carry was zeroed before step `t`).
    - `actions`: `(T, B, action_space_size)` (or `(T, B)` integers when discrete).
    - `log_probs`, `values`: `(T, B)`.
    - `aux`: whatever `env_step` returned as its fourth output, stacked over time
      (rewards, truncation flags, ...).
    - `carry`: the carry *before* step 0, each `(B, lstm_features)`: pass it with
      `observations` and `episode_start` to
      [`eqx_lstm_ac.LSTMActorCritic.sequence`][] to recompute these steps exactly.
    """

    observations: Float[Array, "T B obs"]
    episode_start: Bool[Array, "T B"]
    actions: Float[Array, "T B action"] | Int[Array, "T B"]
    log_probs: Float[Array, "T B"]
    values: Float[Array, "T B"]
    aux: PyTree
    carry: LSTMCarry


@eqx.filter_jit
def rollout(
    model: LSTMActorCritic,
    state: eqx.nn.State,
    env_step: Callable[[Any, Array, PRNGKeyArray], tuple[Any, Array, Array, PyTree]],
    env_state: PyTree,
    obs: Float[Array, "B obs"],
    episode_start: Bool[Array, " B"],
    num_steps: int,
    *,
    key: PRNGKeyArray,
    deterministic: bool = False,
) -> tuple[Rollout, tuple[eqx.nn.State, PyTree, Float[Array, "B obs"], Bool[Array, " B"]]]:
    """Run `num_steps` steps of policy and environment in one compiled `jax.lax.scan`.

    A Python loop of jitted single steps pays the dispatch of each call (tens to
    hundreds of microseconds on a CPU); fusing the loop pays it once. Each step does
    exactly what the single-step API does:
    `state = model.reset(state, obs.shape, mask=episode_start)`, then
    `model.act(obs, state, key=...)`, then `env_step`.

    **Arguments:**

    - `model`: the actor-critic.
    - `state`: the `eqx.nn.State` holding the carry, batch shape `(B,)`.
    - `env_step`: a JAX-traceable function
      `env_step(env_state, action, key) -> (env_state, obs, episode_start, aux)`:
      the next observation `(B, obs_dim)`, whether it begins a new episode `(B,)`
      (the environment resets itself), and any pytree `aux` to record (e.g. rewards).
    - `env_state`: the environment's state (any pytree).
    - `obs`: the current observations, `(B, obs_dim)`.
    - `episode_start`: booleans `(B,)`, true where `obs` begins an episode.
    - `num_steps`: the number of steps `T` (static).
    - `key`: a `jax.random.key`. (Keyword only.)
    - `deterministic`: take deterministic actions instead of sampling.

    **Returns:**

    `(trajectory, (state, env_state, obs, episode_start))`: the
    [`eqx_lstm_ac.Rollout`][] of the `T` steps, and everything needed to continue
    with the next rollout.

    **Raises:**

    `ValueError` if `obs` is not `(B, obs_dim)` or `episode_start` is not `(B,)`.
    """
    if obs.ndim != 2 or obs.shape[-1] != model.obs_dim:
        raise ValueError(
            f"rollout expects observations of shape (B, {model.obs_dim}); got {tuple(obs.shape)}."
        )
    batch = obs.shape[0]
    if tuple(episode_start.shape) != (batch,) or episode_start.dtype != jnp.bool_:
        raise ValueError(
            f"episode_start must be a boolean array of shape ({batch},); got "
            f"{episode_start.dtype} of shape {tuple(episode_start.shape)}."
        )
    carry0 = model.carry(state)
    if tuple(carry0.h.shape[:-1]) != (batch,):
        carry0 = model.zero_carry((batch,))

    def body(loop, step_key):
        (h, c), env_state, obs, start = loop
        k_act, k_env = jax.random.split(step_key)
        keep = ~start[:, None]
        h, c = model._step(obs, (jnp.where(keep, h, 0.0), jnp.where(keep, c, 0.0)))
        pi, value = model._heads(h)
        action, log_prob, value = _act(pi, value, k_act, deterministic)
        env_state, next_obs, next_start, aux = env_step(env_state, action, k_env)
        out = (obs, start, action, log_prob, value, aux)
        return ((h, c), env_state, next_obs, next_start), out

    loop0 = ((carry0.h, carry0.c), env_state, obs, episode_start)
    ((h, c), env_state, obs, episode_start), outs = jax.lax.scan(
        body, loop0, jax.random.split(key, num_steps)
    )
    trajectory = Rollout(*outs, carry=carry0)
    state = model._store(state, LSTMCarry(h, c))
    return trajectory, (state, env_state, obs, episode_start)


class Actor:
    """`model.act` and `model.reset` for rollouts driven one step at a time from Python,
    at the dispatch cost of a plain `jax.jit`.

    `model.act` is an `eqx.filter_jit` method: every call flattens the model and
    splits its arrays from the rest before it reaches the compiled code, which costs
    more than the step itself at small batches. An `Actor` does that split once, when
    it is made, and then calls a `jax.jit` function of the arrays alone. It computes
    exactly what `model.act` and `model.reset` compute (a test holds it); when the
    whole loop, environment included, is JAX, [`eqx_lstm_ac.rollout`][] is cheaper
    still.

    ```python
    actor = lac.Actor(model)
    state = actor.reset(state, obs.shape)
    for t in range(steps):
        (action, log_prob, value), state = actor(obs, state, key=keys[t])
        obs, start = env.step(action)  # any Python environment
        state = actor.reset(state, obs.shape, mask=start)
    ```

    Make a new `Actor` after the model's weights change (e.g. after a training
    update): it holds the arrays it was made with.
    """

    def __init__(self, model: Any):
        """**Arguments:**

        - `model`: an [`eqx_lstm_ac.LSTMActorCritic`][] or
          [`eqx_lstm_ac.MLPActorCritic`][].
        """
        params, static = eqx.partition(model, eqx.is_array)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        self.model = model
        self._leaves = leaves

        def rebuild(leaves):
            return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)

        def act(leaves, x, state, key, deterministic):
            return rebuild(leaves).act(x, state, key=key, deterministic=deterministic)

        def reset(leaves, state, mask, shape):
            return rebuild(leaves).reset(state, shape, mask)

        self._act = jax.jit(act, static_argnums=4)
        self._reset = jax.jit(reset, static_argnums=3)

    def __call__(
        self,
        x: Float[Array, "*batch obs"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray,
        deterministic: bool = False,
    ) -> tuple[tuple[Array, Float[Array, "*batch"], Float[Array, "*batch"]], eqx.nn.State]:
        """As [`eqx_lstm_ac.LSTMActorCritic.act`][]: `(action, log_prob, value), state`."""
        return self._act(self._leaves, x, state, key, bool(deterministic))

    def reset(
        self,
        state: eqx.nn.State,
        shape: tuple[int, ...],
        mask: Bool[Array, " n"] | None = None,
    ) -> eqx.nn.State:
        """As [`eqx_lstm_ac.LSTMActorCritic.reset`][]."""
        return self._reset(self._leaves, state, mask, tuple(shape))
