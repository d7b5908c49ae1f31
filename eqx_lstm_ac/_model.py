"""`LSTMActorCritic`: an MLP encoder, a single-layer LSTM torso, linear policy and value
heads."""

import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._actor_critic import AbstractActorCritic, metadata_of
from ._heads import (
    activation_name,
    ACTIVATIONS,
    add_bias,
    apply_linear,
    init_heads,
    LogStdParameter,
    orthogonal_linear,
    SoftplusStdHead,
)
from ._lstm_scan import (
    Affine,
    CellWeights,
    keep_where,
    lstm_sequence,
    lstm_update,
    LSTMWeights,
    matmul_t,
)


class LSTMCarry(NamedTuple):
    """The LSTM carry: hidden state `h` and cell state `c`, each `(..., lstm_features)`."""

    h: Float[Array, "*batch lstm"]
    c: Float[Array, "*batch lstm"]


def _init_cell(key: PRNGKeyArray, input_size: int, hidden_size: int) -> eqx.nn.LSTMCell:
    """An `eqx.nn.LSTMCell` initialised as the reference does: LeCun-normal input
    weights, an orthogonal recurrent block per gate, zero bias."""
    k_cell, k_ih, k_hh = jax.random.split(key, 3)
    cell = eqx.nn.LSTMCell(input_size, hidden_size, key=k_cell)
    w_ih = jax.random.normal(k_ih, (4 * hidden_size, input_size), jnp.float32)
    w_ih = w_ih / math.sqrt(input_size)
    orth = jax.nn.initializers.orthogonal()
    w_hh = jnp.concatenate(
        [orth(k, (hidden_size, hidden_size), jnp.float32) for k in jax.random.split(k_hh, 4)]
    )
    bias = jnp.zeros((4 * hidden_size,), jnp.float32)
    return eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell, (w_ih, w_hh, bias))


@eqx.filter_jit
def _init_layers(
    key: PRNGKeyArray,
    obs_dim: int,
    action_dim: int,
    hidden_features: int,
    lstm_features: int,
    discrete: bool,
    sigma_head: bool,
) -> tuple[
    eqx.nn.Linear,
    eqx.nn.LSTMCell,
    eqx.nn.Linear,
    "LogStdParameter | SoftplusStdHead | None",
    eqx.nn.Linear,
]:
    """The initial layers, made in one compiled call (sizes are static): op by op, the
    many small initialisers would each compile on first use, which is slow."""
    k_enc, k_cell, k_mu, k_sigma, k_critic = jax.random.split(key, 5)
    encoder = orthogonal_linear(k_enc, obs_dim, hidden_features, math.sqrt(2.0))
    cell = _init_cell(k_cell, hidden_features, lstm_features)
    heads = init_heads((k_mu, k_sigma, k_critic), lstm_features, action_dim, discrete, sigma_head)
    return (encoder, cell, *heads)


class LSTMActorCritic(AbstractActorCritic):
    r"""A recurrent actor-critic: an MLP encoder, a single-layer LSTM torso, and linear
    policy and value heads.

    Two calling modes share one cell body:

    - **single step** (rollouts): `model(x, state)` with `x` of shape `(..., obs_dim)`
      reads the carry from `state`, advances it one step, and returns
      `(pi, value), state` with `pi` over `(..., action_space_size)` and `value` of shape
      `(..., 1)`;
    - **sequence** (training): `model.sequence(xs)` with time-major `xs` of shape
      `(T, B, obs_dim)` scans the cell over time and returns `(pi, value), carry` with
      one output per step.

    The carry is state, not a parameter: it lives in an `eqx.nn.State`, never in the
    model, so a saved model does not depend on the number of environments.

    !!! info "The reset convention: `episode_start`"
        `episode_start[t, b] == True` means *observation `t` of environment `b` begins a
        new episode*: the carry of `b` is set to zero **before** step `t`. The
        single-step equivalent is `state = model.reset(state, x.shape, mask=...)` before
        calling the model on the first observation of an episode.

    !!! example
        ```python
        import equinox as eqx, jax, jax.numpy as jnp
        import eqx_lstm_ac as lac

        model, state = eqx.nn.make_with_state(lac.LSTMActorCritic)(
            observation_space_size=8, action_space_size=2,
            action_space=lac.BoxSpace(-1.0, 1.0), carry_shape=(16,),
            key=jax.random.key(0))
        x = jnp.zeros((16, 8))
        (pi, value), state = model(x, state)       # (16, 2) policy, (16, 1) values
        ```
    """

    encoder: eqx.nn.Linear
    cell: eqx.nn.LSTMCell
    actor_mu: eqx.nn.Linear
    actor_sigma: LogStdParameter | SoftplusStdHead | None
    critic: eqx.nn.Linear
    bij: distrax.Bijector | None
    carry_index: eqx.nn.StateIndex | None
    obs_dim: int = eqx.field(static=True)
    action_dim: int = eqx.field(static=True)
    hidden_features: int = eqx.field(static=True)
    lstm_features: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    actor_sigma_head: bool = eqx.field(static=True)
    discrete: bool = eqx.field(static=True)
    remat: bool = eqx.field(static=True)

    def __init__(
        self,
        observation_space_size: int,
        action_space_size: int,
        hidden_features: int = 64,
        lstm_features: int = 128,
        activation: Callable[[Array], Array] | str = jax.nn.gelu,
        action_space: distrax.Bijector | None = None,
        actor_sigma_head: bool = False,
        carry_shape: tuple[int, ...] = (),
        discrete: bool = False,
        remat: bool = False,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `observation_space_size`: `obs_dim`, the size of the last axis of an
          observation.
        - `action_space_size`: the number of action dimensions (continuous), or of
          actions (`discrete=True`).
        - `hidden_features`: width of the encoder output, the LSTM's input.
        - `lstm_features`: size of the LSTM's hidden and cell states; the heads read it.
        - `activation`: the encoder's activation, a function from
          [`eqx_lstm_ac.ACTIVATIONS`][] (e.g. `jax.nn.gelu`) or its name.
        - `action_space`: a bijector that constrains the Gaussian policy:
          [`eqx_lstm_ac.FreeSpace`][], [`eqx_lstm_ac.BoxSpace`][],
          [`eqx_lstm_ac.MaxNormSpace`][], any `distrax.Bijector`, or `None` (free). A
          scalar bijector is lifted to the action vector with `distrax.Block(b, 1)`.
        - `actor_sigma_head`: `False` for a state-independent `log_std` parameter,
          `True` for a linear head followed by softplus.
        - `carry_shape`: leading shape of the carry in the initial state made by
          `eqx.nn.make_with_state` (e.g. `(num_envs,)`); not part of the model.
        - `discrete`: a categorical policy over `action_space_size` actions, with
          `actor_mu` as its logits head.
        - `remat`: differentiate sequence mode through a plain scan with the step
          under `jax.checkpoint` instead of the hand-written reverse pass: the same
          values and gradients, about twice the memory (it keeps `h` and `c` of every
          step; the default keeps `h` of every step and `c` once per chunk), slower,
          and it supports forward mode (`jax.jvp`) too.
        - `key`: a `jax.random.key` for the initial parameters. (Keyword only.)

        **Raises:**

        `ValueError` for a non-positive size, an unknown activation, an action space
        given together with `discrete=True`, or a bijector of the wrong event rank.
        """
        self._init_policy(
            {
                "observation_space_size": observation_space_size,
                "action_space_size": action_space_size,
                "hidden_features": hidden_features,
                "lstm_features": lstm_features,
            },
            {"actor_sigma_head": actor_sigma_head, "discrete": discrete, "remat": remat},
            tuple(carry_shape),
            action_space,
        )
        self.hidden_features = hidden_features
        self.lstm_features = lstm_features
        self.activation = activation_name(activation)
        self.actor_sigma_head = actor_sigma_head
        self.remat = remat

        layers = _init_layers(
            key,
            observation_space_size,
            action_space_size,
            hidden_features,
            lstm_features,
            discrete,
            actor_sigma_head,
        )
        self.encoder, self.cell, self.actor_mu, self.actor_sigma, self.critic = layers
        self.carry_index = eqx.nn.StateIndex(self.zero_carry(tuple(carry_shape)))

    # ------------------------------------------------------------------ the interface

    features_argument: ClassVar[str] = "lstm_features"

    @property
    def metadata(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (JSON-serialisable, apart
        from a user-defined `action_space`). `carry_shape` is not among them: the carry
        is not part of the model."""
        return metadata_of(
            self,
            hidden_features=self.hidden_features,
            lstm_features=self.lstm_features,
            activation=self.activation,
            actor_sigma_head=self.actor_sigma_head,
            remat=self.remat,
        )

    # ------------------------------------------------------------------ carry

    def zero_carry(self, batch_shape: tuple[int, ...] = ()) -> LSTMCarry:
        """A carry of zeros with leading shape `batch_shape`."""
        z = jnp.zeros(tuple(batch_shape) + (self.lstm_features,), self.cell.weight_hh.dtype)
        return LSTMCarry(z, z)

    # ------------------------------------------------------------------ checks

    def _check_carry(self, carry: LSTMCarry, batch: tuple[int, ...]) -> None:
        want = batch + (self.lstm_features,)
        for name, part in zip(("h", "c"), carry, strict=True):
            if tuple(part.shape) != want:
                raise ValueError(
                    f"carry.{name} must have shape {want} (batch shape {batch} and "
                    f"lstm_features={self.lstm_features}); got {tuple(part.shape)}."
                )

    # ------------------------------------------------------------------ the cell body

    def _step(self, x: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        """One step of encoder and LSTM for a batch: `x (..., obs_dim)`, carry `(..., H)`.

        Computes exactly what `eqx.nn.LSTMCell` computes (a test holds it), as batched
        matmuls `(..., I) @ (I, 4H)` rather than a vmap of matrix-vector products. Every
        operation acts on the last axis only, so the leading (batch) axes keep whatever
        sharding they have."""
        h, c = carry
        z = ACTIVATIONS[self.activation](apply_linear(self.encoder, x))
        cell = self.cell
        pre = matmul_t(z, cell.weight_ih) + matmul_t(h, cell.weight_hh)
        if cell.bias is not None:
            pre = add_bias(pre, cell.bias)
        return lstm_update(pre, c)

    def _weights(self) -> LSTMWeights:
        """The encoder's, the cell's and the heads' readout arrays, for the sequence kernel."""
        cell = self.cell
        bias = cell.bias
        if bias is None:
            bias = jnp.zeros((4 * self.lstm_features,), cell.weight_hh.dtype)
        b_enc = self.encoder.bias
        if b_enc is None:
            b_enc = jnp.zeros((self.hidden_features,), self.encoder.weight.dtype)
        w_out, b_out = self.readout_weights()
        return LSTMWeights(
            Affine(self.encoder.weight, b_enc),
            CellWeights(cell.weight_ih, cell.weight_hh, bias),
            Affine(w_out, b_out),
        )

    def _scan_remat(
        self, xs: Array, carry: tuple[Array, Array], episode_start: Array | None
    ) -> tuple[tuple[Array, Array], Array]:
        """The plain scan with the step under `jax.checkpoint`: the backward pass keeps
        only the carries and recomputes each step."""

        @jax.checkpoint
        def body(hc, inp):
            x, start = inp
            keep = None if start is None else ~start[:, None]
            hc = self._step(x, (keep_where(keep, hc[0]), keep_where(keep, hc[1])))
            return hc, hc[0]

        return jax.lax.scan(body, carry, (xs, episode_start))

    # ------------------------------------------------------------------ the torso

    def torso(self, x: Float[Array, "*batch obs"], carry: LSTMCarry) -> tuple[Array, LSTMCarry]:
        """One step of encoder and LSTM: the hidden state `h` (the heads' input) and the
        new carry."""
        h, c = self._step(x, (carry.h, carry.c))
        return h, LSTMCarry(h, c)

    def sequence_readout(
        self,
        xs: Float[Array, "T B obs"],
        carry: LSTMCarry | tuple[Float[Array, "B lstm"], Float[Array, "B lstm"]] | None,
        episode_start: Bool[Array, "T B"] | None,
    ) -> tuple[Float[Array, "T B out"], LSTMCarry]:
        """The LSTM scanned over a checked `(T, B, obs_dim)` sequence, read out by the
        heads' stacked linear layer.

        !!! info "Differentiation"
            Without `remat`, the reverse pass is hand-written (`jax.custom_vjp`): the
            recurrence runs step by step, and the gates (recomputed) and the weight
            gradients are one matmul per chunk of about 1024 rows (steps x batch). It
            equals `jax.grad` of the plain scan to float32 precision and
            supports reverse mode (`jax.grad`, `jax.vjp`) under `jit` and `vmap`, but
            not forward mode (`jax.jvp`); use `remat=True` for that.
        """
        batch = xs.shape[1]
        if carry is None:
            # Zeros made from `xs`, not constants: inside `shard_map` they then vary over
            # the same mesh axes as `xs`, as `lax.scan` requires of its carry.
            zero = jnp.zeros_like(xs[0, :, :1], self.cell.weight_hh.dtype)
            zero = jnp.broadcast_to(zero, (batch, self.lstm_features))
            carry = LSTMCarry(zero, zero)
        else:
            carry = LSTMCarry(*carry)
            self._check_carry(carry, (batch,))

        if self.remat:
            (h, c), features = self._scan_remat(xs, (carry.h, carry.c), episode_start)
            return self.readout(features), LSTMCarry(h, c)
        keep = None if episode_start is None else (~episode_start)[:, :, None]
        ys, h, c = lstm_sequence(
            ACTIVATIONS[self.activation], self._weights(), xs, keep, carry.h, carry.c
        )
        return ys, LSTMCarry(h, c)
