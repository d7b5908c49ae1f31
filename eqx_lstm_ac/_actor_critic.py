"""`AbstractActorCritic`: what every actor-critic of this library offers, and the parts
they share (the heads, the carry in an `eqx.nn.State`, `act`, `evaluate`, the checks).

A model is a torso plus the shared heads. A concrete model (final, never subclassed
again) says how its torso takes one step and a whole sequence, what its carry is, and
how to build it from its `metadata`; everything else is written here once.
"""

import abc
import inspect
from typing import Any, ClassVar

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, Shaped

from ._action_spaces import _lift, _unlift, describe_space, FreeSpace, space_from_description
from ._distributions import CategoricalPolicy, GaussianPolicy
from ._heads import add_bias, check_options, LogStdParameter, SoftplusStdHead
from ._lstm_scan import keep_where, matmul_t
from ._normalize import RunningMoments


_Actions = Float[Array, "*batch action"] | Int[Array, "*batch"]
ActOutput = tuple[tuple[_Actions, Float[Array, "*batch"], Float[Array, "*batch"]], eqx.nn.State]
"""What `act` returns: `(action, log_prob, value), state`."""


def _check_obs(obs_dim: int, x: Array, what: str) -> None:
    if x.ndim < 1 or x.shape[-1] != obs_dim:
        raise ValueError(
            f"{what} must have last axis of size obs_dim={obs_dim}, i.e. shape "
            f"(..., {obs_dim}); got shape {tuple(x.shape)}."
        )


def _clone(state: eqx.nn.State) -> eqx.nn.State:
    """A copy of `state` that may be read again after the original was used."""
    leaves, treedef = jtu.tree_flatten(state)
    return jtu.tree_unflatten(treedef, leaves)


def _batch_shape(carry: PyTree) -> tuple[int, ...] | None:
    """The leading (batch) shape of a carry whose leaves are `(*batch, n)`; `None` for
    an empty carry."""
    leaves = jtu.tree_leaves(carry)
    return None if not leaves else tuple(leaves[0].shape[:-1])


# ---------------------------------------------------------------------- the interface


class AbstractActorCritic(eqx.Module):
    r"""An actor-critic: a torso (with or without memory) and linear policy and value
    heads, with one calling interface that the trainer, the rollout, checkpoints and the
    command line use. [`eqx_lstm_ac.LSTMActorCritic`][] and
    [`eqx_lstm_ac.MLPActorCritic`][] are its two implementations.

    - **single step**: `model(x, state)` for observations `(..., obs_dim)` returns
      `(pi, value), state`; [`eqx_lstm_ac.AbstractActorCritic.act`][] samples from it;
    - **sequence**: `model.sequence(xs, carry, episode_start)` for time-major
      `(T, B, obs_dim)` returns `(pi, value), carry`;
      [`eqx_lstm_ac.AbstractActorCritic.evaluate`][] gives log-probabilities, entropies
      and values of stored actions.

    The carry (whatever the torso remembers) lives in an `eqx.nn.State`; every leaf of
    it has the shape `(*batch, n)`. A memoryless torso has the empty carry `()`.

    **Writing a new model.** Subclass this (the subclass is final), declare the fields
    named below, set the shared ones in the constructor with `self._init_policy(...)`
    (or by hand, with `obs_norm = None`), and implement `zero_carry`,
    `torso`, `sequence_readout`, `metadata` and `make`; then add it to
    [`eqx_lstm_ac.MODELS`][]. The trainer, `rollout`, `save`/`load` and the command
    line take it from there; observation normalisation too.
    """

    obs_dim: eqx.AbstractVar[int]
    action_dim: eqx.AbstractVar[int]
    discrete: eqx.AbstractVar[bool]
    actor_mu: eqx.AbstractVar[eqx.nn.Linear]
    actor_sigma: eqx.AbstractVar[LogStdParameter | SoftplusStdHead | None]
    critic: eqx.AbstractVar[eqx.nn.Linear]
    bij: eqx.AbstractVar[distrax.Bijector | None]
    carry_index: eqx.AbstractVar[eqx.nn.StateIndex | None]
    obs_norm: RunningMoments | None
    """The running moments that normalise the observations before the torso, or `None`
    for raw observations. The trainer adds and updates them
    ([`eqx_lstm_ac.PPOConfig`][]'s `normalize_observations`); they are saved with the
    model, so a loaded model sees its inputs exactly as training did. Every
    constructor sets it to `None`."""

    metadata_ignores: ClassVar[tuple[str, ...]] = ("carry_shape", "key")
    """Constructor arguments that are not part of `metadata`."""

    # ------------------------------------------------------------------ to implement

    @abc.abstractmethod
    def zero_carry(self, batch_shape: tuple[int, ...] = ()) -> PyTree:
        """A carry of zeros with leading shape `batch_shape`."""

    @abc.abstractmethod
    def torso(self, x: Float[Array, "*batch obs"], carry: PyTree) -> tuple[Array, PyTree]:
        """One step of the torso for a batch: `(features (*batch, features), carry)`."""

    @abc.abstractmethod
    def sequence_readout(
        self, xs: Float[Array, "T B obs"], carry: PyTree | None, episode_start: Array | None
    ) -> tuple[Float[Array, "T B out"], PyTree]:
        """The heads' stacked readout ([`eqx_lstm_ac.AbstractActorCritic.readout_weights`][])
        of every step of a checked sequence, and the carry after the last step."""

    @property
    @abc.abstractmethod
    def metadata(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (JSON-serialisable; the
        action space as [`eqx_lstm_ac.describe_space`][] gives it)."""

    features_argument: ClassVar[str] = "features"
    """The constructor argument that takes the torso's output width (`features` of
    [`eqx_lstm_ac.AbstractActorCritic.make`][])."""

    @classmethod
    def make(
        cls,
        observation_space_size: int,
        action_space_size: int,
        *,
        hidden_features: int,
        features: int,
        activation: str,
        action_space: distrax.Bijector | None,
        discrete: bool,
        key: PRNGKeyArray,
    ) -> "AbstractActorCritic":
        """Build a model from the sizes every model has: the encoder's width
        `hidden_features` and the torso's output width `features` (passed to the
        constructor as `features_argument`)."""
        build: Any = eqx.nn.make_with_state(cls)
        model, _ = build(
            observation_space_size,
            action_space_size,
            hidden_features=hidden_features,
            activation=activation,
            action_space=action_space,
            discrete=discrete,
            key=key,
            **{cls.features_argument: features},
        )
        return model

    # ------------------------------------------------------------------ construction

    def _init_policy(
        self,
        sizes: dict[str, Any],
        flags: dict[str, Any],
        carry_shape: tuple[int, ...],
        action_space: distrax.Bijector | None,
    ) -> None:
        """The part of a constructor every model shares: check the options (as
        `check_options`), then set `obs_dim`, `action_dim`, `discrete`, the policy's
        bijector `bij` and `obs_norm = None`. `sizes` holds `observation_space_size`
        and `action_space_size` first, then the model's own sizes."""
        check_options(sizes, flags, carry_shape, action_space)
        self.obs_dim = sizes["observation_space_size"]
        self.action_dim = sizes["action_space_size"]
        self.discrete = bool(flags.get("discrete", False))
        if self.discrete:
            self.bij = None
        else:
            self.bij = _lift(FreeSpace() if action_space is None else action_space)
        self.obs_norm = None


    @classmethod
    def from_metadata(
        cls,
        metadata: dict[str, Any],
        *,
        action_space: distrax.Bijector | None = None,
        key: PRNGKeyArray,
    ) -> "AbstractActorCritic":
        """A fresh model with the configuration `metadata` (as `model.metadata` gives
        it): the inverse of `metadata`, up to the weights.

        **Arguments:**

        - `metadata`: the constructor arguments.
        - `action_space`: for a model whose metadata names a user-defined action space
          (which cannot be rebuilt from its name): the same bijector again.
        - `key`: a `jax.random.key` for the initial weights. (Keyword only.)

        **Raises:**

        `ValueError` for metadata that names unknown arguments or invalid values.
        """
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}.")
        metadata = dict(metadata)
        normalized = metadata.pop("normalize_observations", False)
        if not isinstance(normalized, bool):
            raise ValueError(f"{cls.__name__}: bad normalize_observations {normalized!r}.")
        params = inspect.signature(cls.__init__).parameters
        known = set(params) - {"self", *cls.metadata_ignores}
        unknown = set(metadata) - known
        if unknown:
            raise ValueError(
                f"{cls.__name__} takes no argument(s) {sorted(unknown)}; expected some of "
                f"{sorted(known)}."
            )
        kwargs = dict(metadata)
        kwargs["action_space"] = space_from_description(metadata.get("action_space"), action_space)
        for name, value in kwargs.items():
            if name != "action_space" and not isinstance(value, (bool, int, float, str)):
                raise ValueError(f"{cls.__name__}: bad {name} {value!r}.")
        model, _ = eqx.nn.make_with_state(cls)(**kwargs, key=key)  # pyright: ignore[reportCallIssue]
        if normalized:
            model = model.with_obs_norm(RunningMoments((model.obs_dim,)))
        return model

    # ------------------------------------------------------------------ inputs

    def inputs(self, x: Float[Array, "*batch obs"]) -> Float[Array, "*batch obs"]:
        """The observations as the torso sees them: in the parameters' dtype (float64
        observations under `jax_enable_x64`, integer or boolean ones become float32 for
        a float32 model), and normalised by `obs_norm` (no gradient flows into it) if
        the model has one."""
        x = jnp.asarray(x, self.critic.weight.dtype)
        return x if self.obs_norm is None else self.obs_norm.normalize(x)

    def with_obs_norm(self, obs_norm: RunningMoments | None) -> "AbstractActorCritic":
        """The same model with other observation moments (`None` for none)."""
        return eqx.tree_at(
            lambda m: m.obs_norm, self, obs_norm, is_leaf=lambda x: x is None
        )

    def trainable(self) -> PyTree:
        """The filter of the parameters an optimiser trains: every floating-point array
        but the observation moments."""
        spec = jax.tree.map(eqx.is_inexact_array, self)
        if self.obs_norm is None:
            return spec
        return eqx.tree_at(
            lambda m: m.obs_norm, spec, jax.tree.map(lambda _: False, self.obs_norm)
        )

    # ------------------------------------------------------------------ heads

    @property
    def action_space(self) -> distrax.Bijector | None:
        """The action-space bijector as it was given (before lifting to vectors)."""
        return None if self.bij is None else _unlift(self.bij)

    def readout_weights(self) -> tuple[Float[Array, "out features"], Float[Array, " out"]]:
        """The heads' linear layers stacked into one `(out, features)` weight and `(out,)`
        bias: policy (mean or logits), value, then the state-dependent standard
        deviation's pre-activation if there is one."""
        layers = [self.actor_mu, self.critic]
        if isinstance(self.actor_sigma, SoftplusStdHead):
            layers.append(self.actor_sigma.linear)
        weight = jnp.concatenate([layer.weight for layer in layers], axis=0)
        bias = jnp.concatenate(
            [
                jnp.zeros((layer.weight.shape[0],), weight.dtype)
                if layer.bias is None
                else layer.bias
                for layer in layers
            ]
        )
        return weight, bias

    def readout(self, features: Float[Array, "*batch features"]) -> Float[Array, "*batch out"]:
        """Every head's linear output in one matmul (see `readout_weights`)."""
        weight, bias = self.readout_weights()
        return add_bias(matmul_t(features, weight), bias)

    def policy_and_value(
        self, ys: Float[Array, "*batch out"]
    ) -> tuple[distrax.Distribution, Float[Array, "*batch 1"]]:
        """The policy and the `(..., 1)` values from a readout `ys`."""
        a = self.actor_mu.weight.shape[0]
        out, value = ys[..., :a], ys[..., a : a + 1]
        if self.discrete:
            return CategoricalPolicy(logits=out), value
        assert self.actor_sigma is not None and self.bij is not None
        if isinstance(self.actor_sigma, SoftplusStdHead):
            sigma = self.actor_sigma.squash(ys[..., a + 1 :])
        else:
            sigma = self.actor_sigma(out)  # reads only the leading shape
        return GaussianPolicy(out, sigma, self.bij), value

    def heads(
        self, features: Float[Array, "*batch features"]
    ) -> tuple[distrax.Distribution, Float[Array, "*batch 1"]]:
        """The policy and the `(..., 1)` values for torso outputs `features`."""
        return self.policy_and_value(self.readout(features))

    # ------------------------------------------------------------------ the carry

    def carry(self, state: eqx.nn.State) -> PyTree:
        """The carry held in `state`, e.g. to store with a rollout and feed back to
        [`eqx_lstm_ac.AbstractActorCritic.sequence`][] in training."""
        if self.carry_index is None:
            return ()
        return state.get(self.carry_index)

    def set_carry(self, state: eqx.nn.State, carry: PyTree) -> eqx.nn.State:
        """`state` holding `carry` instead, also when its batch shape differs from the
        carry there before (`eqx.nn.State.set` alone refuses a change of shape)."""
        if self.carry_index is None:
            return state
        sub = state.substate(self.carry_index)
        sub = jtu.tree_unflatten(jtu.tree_structure(sub), jtu.tree_leaves(carry))
        return state.update(sub)

    def init_state(self, carry_shape: tuple[int, ...] = ()) -> eqx.nn.State:
        """A fresh `eqx.nn.State` with a zero carry of leading shape `carry_shape`.

        Equivalent to the state `eqx.nn.make_with_state` returns, for any model, loaded
        ones included.
        """
        if self.carry_index is None:
            return eqx.nn.State(eqx.nn.delete_init_state(self))
        index = eqx.nn.StateIndex(self.zero_carry(tuple(carry_shape)))
        object.__setattr__(index, "marker", self.carry_index.marker)
        return eqx.nn.State(index)

    # ------------------------------------------------------------------ single step

    def __call__(
        self, x: Float[Array, "*batch obs"], state: eqx.nn.State
    ) -> tuple[tuple[distrax.Distribution, Float[Array, "*batch 1"]], eqx.nn.State]:
        """Single-step mode: one observation per environment.

        **Arguments:**

        - `x`: observations of shape `(..., obs_dim)`.
        - `state`: the `eqx.nn.State` holding the carry. When the carry's leading shape
          differs from `x.shape[:-1]`, the step starts from zeros of the new shape.

        **Returns:**

        `(pi, value), state`: the policy over `(..., action_space_size)`, the values of
        shape `(..., 1)`, and the state with the advanced carry.

        **Raises:**

        `ValueError` if the last axis of `x` is not `obs_dim`.
        """
        _check_obs(self.obs_dim, x, "The observation x")
        lead = tuple(x.shape[:-1])
        carry = self.carry(state)
        if _batch_shape(carry) not in (None, lead):
            carry = self.zero_carry(lead)
        # No flattening of the leading axes: a reshape would gather a batch axis that is
        # sharded across devices but not the first one.
        features, carry = self.torso(self.inputs(x), carry)
        return self.heads(features), self.set_carry(state, carry)

    def value(self, x: Float[Array, "*batch obs"], state: eqx.nn.State) -> Float[Array, "*batch"]:
        """The value of observations `x` from the carry in `state`, without advancing it
        (`state` stays usable)."""
        (_, value), _ = self(x, _clone(state))
        return value[..., 0]

    @eqx.filter_jit
    def reset(
        self,
        state: eqx.nn.State,
        shape: tuple[int, ...],
        mask: Shaped[Array, " n"] | None = None,
    ) -> eqx.nn.State:
        """Zero the carry, all of it or that of the environments in `mask`.

        **Arguments:**

        - `state`: the state holding the carry.
        - `shape`: the shape of the observations that come next, `(..., obs_dim)`.
          If the carry's leading shape differs from `shape[:-1]`, the new state holds
          fresh zeros of that shape (whatever `mask` says).
        - `mask`: `None` to zero everything, or an array of shape `(shape[0],)`:
          `mask[i]` true zeros the carry of environment `i` (the first axis). Boolean,
          or integers read as truth values (non-zero is true).

        **Returns:**

        The state with the reset carry.

        **Raises:**

        `ValueError` if `shape[-1]` is not `obs_dim`, or `mask` is not a boolean or
        integer array of shape `(shape[0],)`.
        """
        shape = tuple(shape)
        if len(shape) < 1 or shape[-1] != self.obs_dim:
            raise ValueError(
                f"reset needs the observation shape (..., {self.obs_dim}); got {shape}."
            )
        lead = shape[:-1]
        if mask is not None and (len(lead) == 0 or tuple(mask.shape) != (lead[0],)):
            want = f"({lead[0]},)" if lead else "no mask (an unbatched carry)"
            raise ValueError(
                f"reset's mask must have shape {want} for observations of shape {shape}; "
                f"got mask of shape {tuple(mask.shape)}."
            )
        if mask is not None:
            if jnp.issubdtype(mask.dtype, jnp.integer):
                mask = mask != 0
            elif mask.dtype != jnp.bool_:
                raise ValueError(
                    f"reset's mask must be boolean (or integer truth values); got dtype "
                    f"{mask.dtype}."
                )
        carry = self.carry(state)
        batch = _batch_shape(carry)
        if batch is None:
            return state
        if batch != lead:
            return self.set_carry(state, self.zero_carry(lead))
        # Zero through `where` on the old carry, not with fresh zeros, so that the new
        # carry keeps the old one's placement (e.g. sharded along the batch axis).
        keep = jnp.zeros((), bool) if mask is None else ~mask.reshape(mask.shape + (1,) * len(lead))
        return self.set_carry(state, jax.tree.map(lambda p: keep_where(keep, p), carry))

    @eqx.filter_jit
    def act(
        self,
        x: Float[Array, "*batch obs"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray,
        deterministic: bool = False,
    ) -> ActOutput:
        """One compiled rollout step: choose an action and advance the carry.

        **Arguments:**

        - `x`: observations of shape `(..., obs_dim)`.
        - `state`: the state holding the carry.
        - `key`: a `jax.random.key` for sampling. (Keyword only.)
        - `deterministic`: take the deterministic action (the bijector applied to the
          mean; the most probable action for a discrete policy) instead of sampling.

        **Returns:**

        `(action, log_prob, value), state`: actions `(..., action_space_size)` (or
        `(...)` integers for a discrete policy), their log-probabilities `(...)`, the
        values `(...)`, and the advanced state. The log-probability is computed from the
        action exactly as [`eqx_lstm_ac.AbstractActorCritic.evaluate`][] computes it, so
        the first PPO probability ratio is one.
        """
        (pi, value), state = self(x, state)
        if deterministic:
            action = pi.deterministic_action()  # type: ignore[attr-defined]
        else:
            action = pi.sample(seed=key)
        return (jnp.asarray(action), jnp.asarray(pi.log_prob(action)), value[..., 0]), state

    # ------------------------------------------------------------------ sequences

    def sequence(
        self,
        xs: Float[Array, "T B obs"],
        carry: PyTree | None = None,
        episode_start: Bool[Array, "T B"] | None = None,
    ) -> tuple[tuple[distrax.Distribution, Float[Array, "T B 1"]], PyTree]:
        """Sequence mode: run the model over a time-major batch of sequences.

        **Arguments:**

        - `xs`: observations of shape `(T, B, obs_dim)`.
        - `carry`: the carry before step 0, batch shape `(B,)`; zeros if `None`. In
          training, pass the carry stored at the start of the rollout
          ([`eqx_lstm_ac.AbstractActorCritic.carry`][]).
        - `episode_start`: boolean `(T, B)`; `episode_start[t, b]` true means
          observation `t` of environment `b` begins a new episode, so the carry of `b`
          is zeroed before step `t`. `None` means no episode starts inside `xs`.

        **Returns:**

        `(pi, value), carry`: the policy over `(T, B, action_space_size)`, values of
        shape `(T, B, 1)`, and the carry after the last step.

        **Raises:**

        `ValueError` if `xs` is not `(T, B, obs_dim)`, or `episode_start` or `carry`
        do not match it.
        """
        if xs.ndim != 3:
            raise ValueError(
                f"sequence expects time-major observations of shape (T, B, {self.obs_dim}); "
                f"got a {xs.ndim}-D array of shape {tuple(xs.shape)}. For one step, "
                "call the model itself."
            )
        _check_obs(self.obs_dim, xs, "The observations xs")
        t_len, batch = xs.shape[0], xs.shape[1]
        if episode_start is not None:
            if tuple(episode_start.shape) != (t_len, batch):
                raise ValueError(
                    f"episode_start must have shape (T, B) = {(t_len, batch)}; got "
                    f"{tuple(episode_start.shape)}."
                )
            if episode_start.dtype != jnp.bool_:
                raise ValueError(f"episode_start must be boolean; got dtype {episode_start.dtype}.")
        ys, carry = self.sequence_readout(self.inputs(xs), carry, episode_start)
        return self.policy_and_value(ys), carry

    @eqx.filter_jit
    def evaluate(
        self,
        xs: Float[Array, "T B obs"],
        actions: Float[Array, "T B action"] | Int[Array, "T B"],
        carry: PyTree | None = None,
        episode_start: Bool[Array, "T B"] | None = None,
    ) -> tuple[Float[Array, "T B"], Float[Array, "T B"], Float[Array, "T B"]]:
        """The training pass, compiled: log-probabilities of stored actions, entropies
        and values for every step of a batch of sequences.

        **Arguments:** as [`eqx_lstm_ac.AbstractActorCritic.sequence`][], plus
        `actions`: the actions taken, `(T, B, action_space_size)` (or `(T, B)` integers
        for a discrete policy).

        **Returns:**

        `(log_prob, entropy, value)`, each of shape `(T, B)`.
        """
        (pi, value), _ = self.sequence(xs, carry, episode_start)
        return jnp.asarray(pi.log_prob(actions)), jnp.asarray(pi.entropy()), value[..., 0]


def metadata_of(model: AbstractActorCritic, **sizes: Any) -> dict[str, Any]:
    """The part of `metadata` every model shares, plus its own `sizes`."""
    return {
        "observation_space_size": model.obs_dim,
        "action_space_size": model.action_dim,
        **sizes,
        "action_space": describe_space(model.bij, model.action_dim),
        "discrete": model.discrete,
        **({} if model.obs_norm is None else {"normalize_observations": True}),
    }
