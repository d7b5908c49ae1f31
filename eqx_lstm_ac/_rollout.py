"""One rollout: policy and environments stepped together in one compiled `jax.lax.scan`,
used by the trainer, by evaluation and by users; and `Actor`, for environments driven
from Python one step at a time."""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Key, PRNGKeyArray, PyTree, Shaped

from ._actor_critic import AbstractActorCritic, ActOutput
from ._envs import Environment


def split_keys(key: PRNGKeyArray, n: int) -> Key[Array, " n"]:
    """`n` keys from `key`, one per environment or step."""
    return jax.random.split(key, n)


def strong(tree: PyTree) -> PyTree:
    """Drop weak types (a reset's `0` and a step's `int32` must give one scan carry)."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def where_tree(mask: Bool[Array, " B"], a: PyTree, b: PyTree) -> PyTree:
    """`a` where `mask` (over the leading axis of every leaf), else `b`."""

    def pick(x, y):
        m = mask.reshape(mask.shape + (1,) * (jnp.ndim(x) - 1))
        return jnp.where(m, x, y)

    return jax.tree.map(pick, a, b)


class Trajectory(NamedTuple):
    """What a [`eqx_lstm_ac.rollout`][] stores, time-major `(T, B, ...)`.

    - `obs`: the observation each action was chosen from, `(T, B, obs_dim)`.
    - `action`: `(T, B, action_space_size)` (or `(T, B)` integers when discrete).
    - `log_prob`, `value`: the policy's log-probability of the action and the value.
    - `reward`, `terminated`, `truncated`: what the environment returned for the step.
    - `episode_start`: true where `obs[t, b]` begins an episode (the carry was zeroed
      before step `t`).
    - `carry`: the carry held *before* step `t`'s reset, `(T, B, ...)` per leaf, so
      `model.sequence(obs[t:], carry=carry[t], episode_start=episode_start[t:])`
      recomputes the rollout from step `t` on (see `initial_carry`).
    - `final_value`: the value of the final observation of an episode truncated at step
      `t` (zero elsewhere), for bootstrapping.
    - `episode_return`: the return of the episode so far, step `t`'s reward included;
      where the episode ended at `t` it is that episode's return.
    """

    obs: Float[Array, "T B obs"]
    action: Float[Array, "T B action"] | Int[Array, "T B"]
    log_prob: Float[Array, "T B"]
    value: Float[Array, "T B"]
    reward: Float[Array, "T B"]
    terminated: Bool[Array, "T B"]
    truncated: Bool[Array, "T B"]
    episode_start: Bool[Array, "T B"]
    carry: PyTree
    final_value: Float[Array, "T B"]
    episode_return: Float[Array, "T B"]

    @property
    def initial_carry(self) -> PyTree:
        """The carry before step 0: with `obs` and `episode_start`,
        `model.sequence(traj.obs, traj.initial_carry, traj.episode_start)` recomputes
        the whole rollout."""
        return jax.tree.map(lambda c: c[0], self.carry)

    @property
    def done(self) -> Bool[Array, "T B"]:
        """Where an episode ended (terminated or truncated)."""
        return self.terminated | self.truncated


class RolloutState(NamedTuple):
    """Everything a rollout continues from: the carry in `model_state`, the
    environments' states, the current observations `(B, obs_dim)`, whether each begins
    an episode `(B,)`, and the return of each running episode so far `(B,)`."""

    model_state: eqx.nn.State
    env_state: PyTree
    obs: Float[Array, "B obs"]
    episode_start: Bool[Array, " B"]
    episode_return: Float[Array, " B"]


def start_rollout(
    model: AbstractActorCritic,
    env: Environment,
    num_envs: int,
    *,
    key: PRNGKeyArray,
    env_params: PyTree = None,
) -> RolloutState:
    """Fresh environments and a zero carry for `num_envs` parallel episodes.

    **Arguments:**

    - `model`: the actor-critic (for its carry).
    - `env`: the [`eqx_lstm_ac.Environment`][].
    - `num_envs`: the batch size `B`.
    - `key`: a `jax.random.key` for the environments' resets. (Keyword only.)
    - `env_params`: the environment's parameters; `env.default_params` if `None`.

    **Returns:**

    The [`eqx_lstm_ac.RolloutState`][] to pass to [`eqx_lstm_ac.rollout`][].
    """
    params = env.default_params if env_params is None else env_params
    obs, env_state = strong(
        jax.vmap(env.reset, in_axes=(0, None))(split_keys(key, num_envs), params)
    )
    return RolloutState(
        model_state=model.init_state((num_envs,)),
        env_state=env_state,
        obs=jnp.asarray(obs, jnp.float32),
        episode_start=jnp.ones((num_envs,), bool),
        episode_return=jnp.zeros((num_envs,), jnp.float32),
    )


@eqx.filter_jit
def rollout(
    model: AbstractActorCritic,
    env: Environment,
    state: RolloutState,
    num_steps: int,
    *,
    key: PRNGKeyArray,
    env_params: PyTree = None,
    deterministic: bool = False,
) -> tuple[RolloutState, Trajectory]:
    """Run `num_steps` steps of policy and environments in one compiled `jax.lax.scan`.

    Each step does what the single-step API does: reset the carry of the environments
    whose observation begins an episode (`model.reset(state, obs.shape, mask=...)`),
    [`eqx_lstm_ac.AbstractActorCritic.act`][], then step every environment
    (`jax.vmap` of `env.step`) and reset those whose episode ended. A Python loop of
    jitted single steps pays a dispatch per step (tens to hundreds of microseconds on a
    CPU); this pays it once.

    **Arguments:**

    - `model`: the actor-critic.
    - `env`: the [`eqx_lstm_ac.Environment`][].
    - `state`: where to continue from, e.g. [`eqx_lstm_ac.start_rollout`][] or the
      state a previous rollout returned.
    - `num_steps`: the number of steps `T` (static).
    - `key`: a `jax.random.key`. (Keyword only.)
    - `env_params`: the environment's parameters; `env.default_params` if `None`.
    - `deterministic`: take deterministic actions instead of sampling.

    **Returns:**

    `(state, trajectory)`: the state to continue from, and the
    [`eqx_lstm_ac.Trajectory`][] of the `T` steps.

    **Raises:**

    `ValueError` if the observations are not `(B, obs_dim)` or the flags not `(B,)`.

    !!! example
        ```python
        import jax, eqx_lstm_ac as lac

        env = lac.MemoryTask(delay=4)
        model = lac.make_model(env, "lstm", key=jax.random.key(0))
        state = lac.start_rollout(model, env, num_envs=8, key=jax.random.key(1))
        state, traj = lac.rollout(model, env, state, 16, key=jax.random.key(2))
        # the training pass recomputes exactly these steps
        log_prob, entropy, value = model.evaluate(
            traj.obs, traj.action, traj.initial_carry, traj.episode_start)
        ```
    """
    obs = state.obs
    if obs.ndim != 2 or obs.shape[-1] != model.obs_dim:
        raise ValueError(
            f"rollout expects observations of shape (B, {model.obs_dim}); got {tuple(obs.shape)}."
        )
    num_envs = obs.shape[0]
    start = state.episode_start
    if tuple(start.shape) != (num_envs,) or start.dtype != jnp.bool_:
        raise ValueError(
            f"episode_start must be a boolean array of shape ({num_envs},); got "
            f"{start.dtype} of shape {tuple(start.shape)}."
        )
    params = env.default_params if env_params is None else env_params
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    vreset = jax.vmap(env.reset, in_axes=(0, None))

    def step(rs: RolloutState, key: PRNGKeyArray) -> tuple[RolloutState, Trajectory]:
        stored = model.carry(rs.model_state)
        model_state = model.reset(rs.model_state, rs.obs.shape, mask=rs.episode_start)
        k_act, k_step, k_reset = jax.random.split(key, 3)
        (action, log_prob, value), model_state = model.act(
            rs.obs, model_state, key=k_act, deterministic=deterministic
        )
        final_obs, env_state, reward, terminated, truncated, _ = vstep(
            split_keys(k_step, num_envs), rs.env_state, action, params
        )
        final_obs = jnp.asarray(final_obs, jnp.float32)
        reward = jnp.asarray(reward, jnp.float32)
        done = terminated | truncated
        # The value of the final observation, only needed (and only computed) when
        # some episode was cut short by truncation.
        final_value = jax.lax.cond(
            jnp.any(truncated),
            lambda: jnp.where(truncated, model.value(final_obs, model_state), 0.0),
            lambda: jnp.zeros((num_envs,), jnp.float32),
        )
        reset_obs, reset_state = vreset(split_keys(k_reset, num_envs), params)
        env_state = strong(where_tree(done, reset_state, env_state))
        next_obs = where_tree(done, jnp.asarray(reset_obs, jnp.float32), final_obs)
        episode_return = rs.episode_return + reward
        record = Trajectory(
            obs=rs.obs,
            action=action,
            log_prob=log_prob,
            value=value,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            episode_start=rs.episode_start,
            carry=stored,
            final_value=final_value,
            episode_return=episode_return,
        )
        next_state = RolloutState(
            model_state, env_state, next_obs, done, jnp.where(done, 0.0, episode_return)
        )
        return next_state, record

    return jax.lax.scan(step, state, split_keys(key, num_steps))


EVAL_CHUNK = 32
"""Steps per compiled rollout in `evaluate_policy`, between checks of whether every
episode has ended."""


@eqx.filter_jit
def evaluate_policy(
    model: AbstractActorCritic,
    env: Environment,
    *,
    key: PRNGKeyArray,
    num_episodes: int = 32,
    deterministic: bool = True,
    max_steps: int = 10_000,
    env_params: PyTree = None,
) -> Float[Array, " episodes"]:
    """Run `num_episodes` episodes in parallel, each to its end (or `max_steps`), and
    return their returns.

    **Arguments:**

    - `model`: the model.
    - `env`: the [`eqx_lstm_ac.Environment`][].
    - `key`: a `jax.random.key`. (Keyword only.)
    - `num_episodes`: episodes to run (one per parallel environment).
    - `deterministic`: act with the deterministic action (the squashed mean, or the most
      probable action) instead of sampling.
    - `max_steps`: a cap on the episode length.
    - `env_params`: the environment's parameters; `env.default_params` if `None`.

    **Returns:**

    The returns, shape `(num_episodes,)`.
    """
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}.")
    k_reset, k_loop = jax.random.split(key)
    rs = start_rollout(model, env, num_episodes, key=k_reset, env_params=env_params)
    chunk = min(max_steps, EVAL_CHUNK)

    def cond(carry):
        t, _, done, _ = carry
        return (t < max_steps) & ~jnp.all(done)

    def body(carry):
        t, rs, done, ret = carry
        rs, traj = rollout(
            model,
            env,
            rs,
            chunk,
            key=jax.random.fold_in(k_loop, t),
            env_params=env_params,
            deterministic=deterministic,
        )
        ended = traj.done
        # steps of each environment's first episode, within the step cap
        before = jnp.cumsum(ended.astype(jnp.int32), axis=0) - ended.astype(jnp.int32)
        index = t + jnp.arange(chunk, dtype=jnp.int32)[:, None]
        counted = ~done[None] & (before == 0) & (index < max_steps)
        ret = ret + jnp.sum(jnp.where(counted, traj.reward, 0.0), axis=0)
        done = done | jnp.any(ended & counted, axis=0)
        return t + chunk, rs, done, ret

    init = (
        jnp.zeros((), jnp.int32),
        rs,
        jnp.zeros((num_episodes,), bool),
        jnp.zeros((num_episodes,), jnp.float32),
    )
    *_, ret = jax.lax.while_loop(cond, body, init)
    return ret


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

    def __init__(self, model: AbstractActorCritic):
        """**Arguments:**

        - `model`: any [`eqx_lstm_ac.AbstractActorCritic`][], e.g. an
          [`eqx_lstm_ac.LSTMActorCritic`][] or an [`eqx_lstm_ac.MLPActorCritic`][].
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
        self, x: Float[Array, "*batch obs"], state: eqx.nn.State, *, key: PRNGKeyArray,
        deterministic: bool = False,
    ) -> ActOutput:
        """As [`eqx_lstm_ac.AbstractActorCritic.act`][]: `(action, log_prob, value), state`."""
        return self._act(self._leaves, x, state, key, bool(deterministic))

    def reset(
        self, state: eqx.nn.State, shape: tuple[int, ...], mask: Shaped[Array, " n"] | None = None
    ) -> eqx.nn.State:
        """As [`eqx_lstm_ac.AbstractActorCritic.reset`][]."""
        return self._reset(self._leaves, state, mask, tuple(shape))
