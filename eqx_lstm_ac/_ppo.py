r"""Recurrent PPO, pure JAX and compiled end to end.

One update ([`eqx_lstm_ac.PPO.train_step`][]) is a rollout followed by PPO epochs:

1. **Rollout.** A `jax.lax.scan` of single model steps over `num_steps` steps of
   `num_envs` environments (`jax.vmap` of the environment's pure functions). Before each
   step the carry of the environments whose observation starts an episode is zeroed
   (`model.reset(state, shape, mask=episode_start)`), and the carry *before* that reset
   is stored with the step.
2. **Advantages.** GAE on the training rewards (times `reward_scale`, divided by the
   running standard deviation of the discounted return), bootstrapping from the value
   of the final observation when an episode was truncated (time limit) and from
   nothing when it terminated; the carry is reset after both.
3. **Epochs.** The rollout is cut into sequences of `sequence_length` steps (32 by
   default); each sequence keeps one environment's steps together and starts
   from the carry stored at its first step, with the stored `episode_start` flags, so the
   recomputed log-probabilities of the first epoch equal the rollout's: the probability
   ratio starts at exactly one. Minibatches are random sets of whole sequences.
4. **Observation moments.** The model's running observation moments take in the
   rollout's observations, after the epochs, so that the rollout and every epoch saw
   the same normalisation.

The gradient is computed in one place, [`eqx_lstm_ac.PPO.grads`][], which averages it
over a named device axis when one is given (for `shard_map`/`pmap` over environments).
"""

from collections.abc import Callable, Sequence
from typing import Any, overload

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._actor_critic import AbstractActorCritic
from ._config import PPOConfig
from ._envs import Environment
from ._normalize import RunningMoments
from ._ppo_loss import Batch, compute_gae, ppo_loss
from ._registry import make_model
from ._rollout import rollout, RolloutState, split_keys, start_rollout, Trajectory
from ._train_state import shard_train_state, stack, TrainState, unstack


ActorCritic = AbstractActorCritic
"""Any actor-critic: the trainer uses only the interface of
[`eqx_lstm_ac.AbstractActorCritic`][]."""


class PPO(eqx.Module):
    """Recurrent PPO for a batch of environments; works with
    [`eqx_lstm_ac.LSTMActorCritic`][] and [`eqx_lstm_ac.MLPActorCritic`][].

    **Arguments:**

    - `config`: the [`eqx_lstm_ac.PPOConfig`][].
    - `env`: the [`eqx_lstm_ac.Environment`][].
    - `env_params`: its parameters; `env.default_params` if `None`.
    - `axis_name`: for data-parallel training inside `shard_map` or `pmap` over
      environments: gradients and diagnostics are averaged over this named axis (each
      device runs `num_envs` environments). `None` on one device.

    !!! info "Data parallelism"
        Everything per environment (rollout, GAE, sequences) is local; the only
        cross-device step is the gradient average in [`eqx_lstm_ac.PPO.grads`][] (and
        the episode counts of `train_step`). Under `shard_map` over a mesh axis named
        `axis_name`, shard the environment-batched leaves of the
        [`eqx_lstm_ac.TrainState`][] (`env_state`, `obs`, `episode_start`,
        `episode_return`, the carry in `model_state`) over that axis, replicate the model
        and the optimiser state, and give each device its own key (e.g.
        `jax.random.fold_in(key, jax.lax.axis_index(axis_name))`). Advantages are
        normalised per minibatch on each device.

    !!! example
        ```python
        import jax, eqx_lstm_ac as lac

        env = lac.MemoryTask(delay=8)
        config = lac.PPOConfig(num_envs=32, num_steps=32, total_steps=200_000)
        ppo = lac.PPO(config, env)
        model = lac.make_model(env, "lstm", key=jax.random.key(0))
        ts = ppo.init(model, key=jax.random.key(1))
        for _ in range(config.num_updates):
            ts, metrics = ppo.train_step(ts)
        ```
    """

    config: PPOConfig = eqx.field(static=True)
    env: Environment
    env_params: PyTree
    axis_name: str | None = eqx.field(static=True)

    def __init__(
        self,
        config: PPOConfig,
        env: Environment,
        env_params: PyTree = None,
        axis_name: str | None = None,
    ):
        self.config = config
        self.env = env
        self.env_params = env.default_params if env_params is None else env_params
        self.axis_name = axis_name

    # ------------------------------------------------------------------ set-up

    def learning_rate(self) -> optax.Schedule:
        """The learning-rate schedule, a function of the optimiser step."""
        c = self.config
        total = c.num_updates * c.num_epochs * c.num_minibatches
        if c.lr_schedule == "linear":
            return optax.linear_schedule(c.learning_rate, 0.0, total)
        if c.lr_schedule == "cosine":
            return optax.cosine_decay_schedule(c.learning_rate, total)
        return optax.constant_schedule(c.learning_rate)

    def optimizer(self) -> optax.GradientTransformation:
        """Adam with global-norm clipping and the learning-rate schedule."""
        return optax.chain(
            optax.clip_by_global_norm(self.config.max_grad_norm),
            optax.adam(self.learning_rate(), eps=1e-5),
        )

    def init(self, model: ActorCritic, *, key: PRNGKeyArray) -> TrainState:
        """The initial [`eqx_lstm_ac.TrainState`][]: fresh environments, zero carries,
        a fresh optimiser state.

        **Arguments:**

        - `model`: the model to train (e.g. from [`eqx_lstm_ac.make_model`][]).
        - `key`: a `jax.random.key`. (Keyword only.)

        **Raises:**

        `ValueError` if the model does not fit the environment.
        """
        env, c = self.env, self.config
        if model.obs_dim != env.observation_size or model.action_dim != env.action_size:
            raise ValueError(
                f"The model (observations {model.obs_dim}, actions {model.action_dim}) does "
                f"not fit {env.name} (observations {env.observation_size}, actions "
                f"{env.action_size})."
            )
        if model.discrete != env.discrete:
            kind = "discrete" if env.discrete else "continuous"
            raise ValueError(f"{env.name} has {kind} actions; the model does not.")
        model = eqx.nn.delete_init_state(model)
        if c.normalize_observations and model.obs_norm is None:
            model = model.with_obs_norm(RunningMoments((model.obs_dim,)))
        k_env, k_next = jax.random.split(key)
        rs = start_rollout(model, env, c.num_envs, key=k_env, env_params=self.env_params)
        opt_state = self.optimizer().init(eqx.filter(model, model.trainable()))
        return TrainState(
            model=model,
            opt_state=opt_state,
            model_state=rs.model_state,
            env_state=rs.env_state,
            obs=rs.obs,
            episode_start=rs.episode_start,
            episode_return=rs.episode_return,
            discounted_return=jnp.zeros((c.num_envs,), jnp.float32),
            return_moments=RunningMoments(),
            key=k_next,
            update=jnp.zeros((), jnp.int32),
        )

    # ------------------------------------------------------------------ rollout

    def rollout(
        self, ts: TrainState
    ) -> tuple[TrainState, Trajectory, Float[Array, " B"], dict[str, Array]]:
        """Run `num_steps` steps of every environment.

        **Returns:**

        `(ts, trajectory, last_value, episodes)`: the advanced state, the
        [`eqx_lstm_ac.Trajectory`][], the value of the observation after the last step
        (with its carry reset if it starts an episode), and `episodes`, a dict with the
        number of episodes finished (`"count"`) and the sum of their returns (`"sum"`).
        """
        model = ts.model
        key, k_roll = jax.random.split(ts.key)
        rs = RolloutState(ts.model_state, ts.env_state, ts.obs, ts.episode_start, ts.episode_return)
        rs, traj = rollout(
            model, self.env, rs, self.config.num_steps, key=k_roll, env_params=self.env_params
        )
        last_value = model.value(
            rs.obs, model.reset(rs.model_state, rs.obs.shape, mask=rs.episode_start)
        )
        done = traj.done
        episodes = {
            "count": jnp.sum(jnp.where(done, 1.0, 0.0)),
            "sum": jnp.sum(jnp.where(done, traj.episode_return, 0.0)),
        }
        ts = eqx.tree_at(
            lambda s: (s.model_state, s.env_state, s.obs, s.episode_start, s.episode_return, s.key),
            ts,
            (*rs, key),
        )
        return ts, traj, last_value, episodes

    # ------------------------------------------------------------------ update

    def training_rewards(
        self, ts: TrainState, traj: Trajectory
    ) -> tuple[TrainState, Float[Array, "T B"]]:
        """The rewards the advantages and value targets are computed from: times
        `reward_scale`, and with `normalize_rewards` divided by the running standard
        deviation of the discounted return (its moments updated with this rollout's
        returns first).

        **Returns:**

        `(ts, rewards)`: the state with the advanced discounted returns and moments, and
        the `(T, B)` rewards.
        """
        c = self.config
        rewards = traj.reward * c.reward_scale
        if not c.normalize_rewards:
            return ts, rewards

        def discount(ret, inp):
            reward, done = inp
            ret = ret * c.gamma + reward
            return jnp.where(done, 0.0, ret), ret

        acc, returns = jax.lax.scan(discount, ts.discounted_return, (rewards, traj.done))
        moments = ts.return_moments.update(returns.reshape(-1), self.axis_name)
        ts = eqx.tree_at(lambda s: (s.discounted_return, s.return_moments), ts, (acc, moments))
        return ts, rewards / moments.std

    def advantages(
        self,
        traj: Trajectory,
        last_value: Float[Array, " B"],
        rewards: Float[Array, "T B"] | None = None,
    ) -> tuple[Float[Array, "T B"], Float[Array, "T B"]]:
        """GAE of a rollout ([`eqx_lstm_ac.compute_gae`][]) on `rewards` (the
        rollout's rewards times `reward_scale` if `None`; see `training_rewards`): the
        next values are the following steps' values, the final observation's value
        where an episode was truncated, and `last_value` after the last step."""
        if rewards is None:
            rewards = traj.reward * self.config.reward_scale
        next_values = jnp.concatenate([traj.value[1:], last_value[None]], axis=0)
        next_values = jnp.where(traj.truncated, traj.final_value, next_values)
        return compute_gae(
            rewards,
            traj.value,
            next_values,
            traj.terminated,
            traj.truncated,
            self.config.gamma,
            self.config.gae_lambda,
        )

    def sequences(
        self, traj: Trajectory, advantages: Float[Array, "T B"], targets: Float[Array, "T B"]
    ) -> Batch:
        """Cut a rollout into training sequences of `sequence_length` steps, `(L, N, ...)`
        with `N = num_envs * num_steps / L`, each with the carry stored at its first
        step."""
        c = self.config
        length, chunks = c.sequence_length, c.num_steps // c.sequence_length

        def cut(x: Array) -> Array:  # (T, B, ...) -> (L, K * B, ...)
            x = x.reshape((chunks, length) + x.shape[1:])
            x = jnp.swapaxes(x, 0, 1)
            return x.reshape((length, chunks * x.shape[2]) + x.shape[3:])

        def starts(x: Array) -> Array:  # (T, B, ...) -> (K * B, ...)
            x = x[::length]
            return x.reshape((chunks * x.shape[1],) + x.shape[2:])

        return Batch(
            obs=cut(traj.obs),
            action=cut(traj.action),
            log_prob=cut(traj.log_prob),
            value=cut(traj.value),
            advantage=cut(advantages),
            target=cut(targets),
            episode_start=cut(traj.episode_start),
            carry=jax.tree.map(starts, traj.carry),
        )

    def grads(self, model: ActorCritic, batch: Batch) -> tuple[PyTree, dict[str, Array]]:
        """The gradient of [`eqx_lstm_ac.ppo_loss`][] on one minibatch with respect to
        the trainable parameters (`model.trainable()`: not the observation moments),
        averaged over `axis_name` when one is set. The only place gradients are
        computed."""
        params, static = eqx.partition(model, model.trainable())

        def loss(params: PyTree) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
            return ppo_loss(eqx.combine(params, static), batch, self.config)

        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        if self.axis_name is not None:
            grads = jax.lax.pmean(grads, self.axis_name)
            aux = jax.lax.pmean(aux, self.axis_name)
        return grads, aux

    def update(
        self,
        ts: TrainState,
        traj: Trajectory,
        last_value: Float[Array, " B"],
        rewards: Float[Array, "T B"] | None = None,
    ) -> tuple[TrainState, dict[str, Array]]:
        """The PPO epochs on one rollout (with the training `rewards`, see
        `advantages`).

        **Returns:**

        `(ts, metrics)`: the state with the new model and optimiser state, and the
        losses and diagnostics averaged over all minibatches.
        """
        c = self.config
        advantages, targets = self.advantages(traj, last_value, rewards)
        batch = self.sequences(traj, advantages, targets)
        n, per = c.num_sequences, c.num_sequences // c.num_minibatches
        optimizer = self.optimizer()
        params, static = eqx.partition(ts.model, ts.model.trainable())

        def minibatches(key: PRNGKeyArray) -> Batch:
            perm = jax.random.permutation(key, n)

            def split_time(x: Array) -> Array:  # (L, N, ...) -> (M, L, N / M, ...)
                x = jnp.take(x, perm, axis=1)
                x = x.reshape((x.shape[0], c.num_minibatches, per) + x.shape[2:])
                return jnp.swapaxes(x, 0, 1)

            def split_carry(x: Array) -> Array:  # (N, ...) -> (M, N / M, ...)
                x = jnp.take(x, perm, axis=0)
                return x.reshape((c.num_minibatches, per) + x.shape[1:])

            return Batch(
                *(split_time(x) for x in batch[:-1]),
                carry=jax.tree.map(split_carry, batch.carry),
            )

        def minibatch_step(carry, mb: Batch):
            params, opt_state = carry
            model = eqx.combine(params, static)
            grads, aux = self.grads(model, mb)
            # optax mixes integer step counts into float arithmetic: allow it under a
            # strict dtype-promotion setting.
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimizer.update(grads, opt_state, params)
            params = eqx.apply_updates(params, updates)
            return (params, opt_state), aux

        def epoch(carry, key):
            return jax.lax.scan(minibatch_step, carry, minibatches(key))

        key, k_epochs = jax.random.split(ts.key)
        (params, opt_state), aux = jax.lax.scan(
            epoch, (params, ts.opt_state), split_keys(k_epochs, c.num_epochs)
        )
        metrics = {name: jnp.mean(value) for name, value in aux.items()}
        metrics["first_ratio"] = aux["ratio"][0, 0]
        ts = eqx.tree_at(
            lambda s: (s.model, s.opt_state, s.key, s.update),
            ts,
            (eqx.combine(params, static), opt_state, key, ts.update + 1),
        )
        return ts, metrics

    @eqx.filter_jit
    def train_step(self, ts: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """One update, compiled: a rollout, GAE, and the PPO epochs.

        **Returns:**

        `(ts, metrics)`: the new state and scalar metrics: `mean_return` (of the
        episodes finished in this rollout; NaN if none), `episodes`, the losses,
        `entropy`, `approx_kl`, `clip_fraction`, `first_ratio` (the mean probability
        ratio of the first minibatch, one up to rounding), `learning_rate`, and
        `finite`: 1 if the loss and every parameter after the update are finite, else 0.
        """
        ts, traj, last_value, episodes = self.rollout(ts)
        count, total = episodes["count"], episodes["sum"]
        if self.axis_name is not None:
            count = jax.lax.psum(count, self.axis_name)
            total = jax.lax.psum(total, self.axis_name)
        ts, rewards = self.training_rewards(ts, traj)
        ts, metrics = self.update(ts, traj, last_value, rewards)
        if self.config.normalize_observations and ts.model.obs_norm is not None:
            flat = traj.obs.reshape((-1, traj.obs.shape[-1]))
            moments = ts.model.obs_norm.update(flat, self.axis_name)
            ts = eqx.tree_at(lambda s: s.model, ts, ts.model.with_obs_norm(moments))
        metrics["episodes"] = count
        metrics["mean_return"] = jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)
        params = jax.tree.leaves(eqx.filter(ts.model, eqx.is_inexact_array))
        finite = jnp.isfinite(metrics["loss"]) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(p)) for p in params])
        )
        metrics["finite"] = jnp.where(finite, 1.0, 0.0)
        step = (ts.update - 1) * self.config.num_epochs * self.config.num_minibatches
        with jax.numpy_dtype_promotion("standard"):
            metrics["learning_rate"] = jnp.asarray(self.learning_rate()(step), jnp.float32)
        return ts, metrics

    def init_seed(self, seed: int, make: Callable[..., ActorCritic]) -> TrainState:
        """The initial training state of the run with `seed`: the model
        `make(key=k_model)` and `self.init(model, key=k_init)`, with `k_model, k_init`
        split from `jax.random.key(seed)`. What [`eqx_lstm_ac.fit`][] starts from."""
        k_model, k_init = jax.random.split(jax.random.key(seed))
        return self.init(make(key=k_model), key=k_init)

    def init_seeds(self, seeds: Sequence[int], make: Callable[..., ActorCritic]) -> TrainState:
        """The stacked initial training states of the runs with `seeds`
        ([`eqx_lstm_ac.PPO.init_seed`][] of each), for `train_steps`."""
        return stack([self.init_seed(seed, make) for seed in seeds])

    @eqx.filter_jit
    def train_steps(self, ts: TrainState) -> tuple[TrainState, dict[str, Array]]:
        """One update of several independent runs at once, compiled as one program:
        `ts` holds one training state per seed, stacked along a leading axis
        ([`eqx_lstm_ac.stack`][]), and `train_step` is `vmap`ped over it.

        **Returns:**

        `(ts, metrics)`: the new stacked state and every metric of `train_step` with a
        leading axis over the runs.
        """
        return eqx.filter_vmap(self.train_step)(ts)


@overload
def train(
    env: Environment,
    config: PPOConfig,
    model: ActorCritic | None = None,
    *,
    key: PRNGKeyArray,
    seeds: None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    devices: int | Sequence[Any] | None = None,
) -> tuple[ActorCritic, list[dict[str, float]]]: ...


@overload
def train(
    env: Environment,
    config: PPOConfig,
    model: ActorCritic | None = None,
    *,
    key: None = None,
    seeds: Sequence[int],
    callback: Callable[[int, dict[str, list[float]]], None] | None = None,
    devices: None = None,
) -> tuple[list[ActorCritic], list[list[dict[str, float]]]]: ...


def train(
    env: Environment,
    config: PPOConfig,
    model: ActorCritic | None = None,
    *,
    key: PRNGKeyArray | None = None,
    seeds: Sequence[int] | None = None,
    callback: Callable[[int, Any], None] | None = None,
    devices: int | Sequence[Any] | None = None,
) -> Any:
    """Train with PPO for `config.num_updates` updates: the whole loop in one call.

    **Arguments:**

    - `env`: the [`eqx_lstm_ac.Environment`][].
    - `config`: the [`eqx_lstm_ac.PPOConfig`][].
    - `model`: the model to train; an [`eqx_lstm_ac.LSTMActorCritic`][] from
      [`eqx_lstm_ac.make_model`][] if `None`.
    - `key`: a `jax.random.key`. (Keyword only.)
    - `seeds`: instead of `key`, train one run per seed, all in one compiled program
      (`jax.vmap` over the runs, see [`eqx_lstm_ac.PPO.train_steps`][]); each run
      equals the run with `key=jax.random.key(seed)` (up to floating-point rounding).
      With `model`, every run starts from it.
    - `callback`: called after every update with the environment steps so far and the
      update's metrics (with `seeds`: lists of values, one per run).
    - `devices`: how many local devices to train on (the environments are split over
      them, see [`eqx_lstm_ac.shard_train_state`][]), a list of devices, or `None` for
      all local devices. `config.num_envs` must divide by their number. Not with
      `seeds`.

    **Returns:**

    `(model, history)`: the trained model and one dict of metrics per update (with
    `env_steps`). With `seeds`: `(models, histories)`, a list of each, one per seed.

    **Raises:**

    `ValueError` unless exactly one of `key` and `seeds` is given, for an empty
    `seeds`, or `devices` with `seeds`.
    """
    ppo = PPO(config, env)
    if (key is None) == (seeds is None):
        raise ValueError("train needs either key= or seeds=, not both or neither.")
    if seeds is not None:
        if len(seeds) == 0 or devices is not None:
            raise ValueError(
                f"train(seeds=...) needs at least one seed and no devices; got seeds="
                f"{list(seeds)}, devices={devices!r}."
            )

        def make(key: PRNGKeyArray) -> ActorCritic:
            return make_model(env, "lstm", key=key) if model is None else model

        ts = ppo.init_seeds(seeds, make)
        histories: list[list[dict[str, float]]] = [[] for _ in seeds]
        for i in range(config.num_updates):
            ts, metrics = ppo.train_steps(ts)
            values = jax.device_get(metrics)
            steps = float((i + 1) * config.steps_per_update)
            for j, history in enumerate(histories):
                history.append({**{n: float(v[j]) for n, v in values.items()}, "env_steps": steps})
            if callback is not None:
                callback(int(steps), {n: [h[-1][n] for h in histories] for n in values})
        return [unstack(ts, j).model for j in range(len(seeds))], histories
    assert key is not None
    k_model, k_init = jax.random.split(key)
    if model is None:
        model = make_model(env, "lstm", key=k_model)
    ppo = PPO(config, env)
    ts = shard_train_state(ppo.init(model, key=k_init), devices)
    history: list[dict[str, float]] = []
    for i in range(config.num_updates):
        ts, metrics = ppo.train_step(ts)
        row = {name: float(value) for name, value in metrics.items()}
        row["env_steps"] = float((i + 1) * config.steps_per_update)
        history.append(row)
        if callback is not None:
            callback(int(row["env_steps"]), row)
    return ts.model, history
