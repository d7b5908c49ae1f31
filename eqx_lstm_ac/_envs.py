"""Environments as pure functions: the built-in memory task, an observation-hiding
wrapper, and an adapter for gymnax environments.

An environment is an [`eqx_lstm_ac.Environment`][]: `reset(key, params)` returns
`(obs, env_state)` and `step(key, env_state, action, params)` returns
`(obs, env_state, reward, terminated, truncated, info)` for **one** environment; the
trainer vectorises them with `jax.vmap`. `step` does not reset: after a step that ends an
episode (terminated or truncated), the trainer calls `reset`, and the observation `step`
returned is the episode's final observation (the one GAE bootstraps from on truncation).
"""

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from ._action_spaces import BoxSpace


EnvAction = Float[Array, " action"] | Int[Array, ""]
"""An action for one environment: a float vector, or an integer scalar when discrete."""

StepResult = tuple[
    Float[Array, " obs"], PyTree, Float[Array, ""], Bool[Array, ""], Bool[Array, ""], dict
]
"""What `step` returns: `(obs, env_state, reward, terminated, truncated, info)`."""


class Environment(eqx.Module):
    """The interface of an environment: pure functions of explicit state, one
    environment at a time (the trainer `vmap`s them over a batch).

    Subclasses set the sizes and implement `reset` and `step`.
    """

    @property
    @abc.abstractmethod
    def observation_size(self) -> int:
        """The size of an observation, `obs_dim`."""

    @property
    @abc.abstractmethod
    def action_size(self) -> int:
        """The number of action coordinates (continuous) or of actions (discrete)."""

    @property
    @abc.abstractmethod
    def discrete(self) -> bool:
        """Whether the actions are integers in `[0, action_size)`."""

    @property
    def action_space(self) -> distrax.Bijector | None:
        """The bijector that maps the policy's Gaussian onto valid actions (`None` for
        unbounded or discrete actions)."""
        return None

    @property
    def default_params(self) -> PyTree:
        """The environment parameters `reset` and `step` take by default."""
        return None

    @property
    def name(self) -> str:
        """A short name, for logs and file names."""
        return type(self).__name__

    @abc.abstractmethod
    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[Float[Array, " obs"], PyTree]:
        """Start an episode.

        **Arguments:**

        - `key`: a `jax.random.key`.
        - `params`: the environment parameters (e.g. `self.default_params`).

        **Returns:**

        `(obs, env_state)`: the first observation `(obs_dim,)` and the state.
        """

    @abc.abstractmethod
    def step(
        self,
        key: PRNGKeyArray,
        env_state: PyTree,
        action: EnvAction,
        params: PyTree,
    ) -> StepResult:
        """Advance one step (no automatic reset).

        **Arguments:**

        - `key`: a `jax.random.key`.
        - `env_state`: the state returned by `reset` or by the previous `step`.
        - `action`: a float vector `(action_size,)`, or an integer scalar for a
          discrete environment.
        - `params`: the environment parameters.

        **Returns:**

        `(obs, env_state, reward, terminated, truncated, info)`: `terminated` is true
        when the episode reached a terminal state (no value beyond it); `truncated` when
        it was cut short (a time limit: the value beyond it is bootstrapped).
        """


class MemoryState(NamedTuple):
    """The state of [`eqx_lstm_ac.MemoryTask`][]: the hidden target and the time."""

    target: Float[Array, " cue"]
    time: Int[Array, ""]


class MemoryTask(Environment):
    r"""Remember a cue shown once, act on it `delay` steps later.

    An episode has `delay + 1` steps, $t = 0, \dots, \text{delay}$. The target
    $g \in \{-1, +1\}^{n}$ ($n$ = `cue_size`) is drawn uniformly at reset. Observations
    have `cue_size + 1` entries:

    - at $t = 0$: $(g, 0)$, the cue;
    - at $0 < t < \text{delay}$: $(0, 0)$, nothing;
    - at $t = \text{delay}$: $(0, 1)$, the query flag.

    Actions are in $[-1, 1]^{n}$ ([`eqx_lstm_ac.BoxSpace`][]`(-1, 1)`). The reward is zero
    except at the query step, where it is $\frac{1}{n}\sum_i a_i g_i$, and the episode
    then terminates. The return of an episode is its query reward.

    **Optimum and chance.** Acting $a = g$ at the query earns the optimum return **1**.
    A feed-forward (memoryless) policy sees the same observation $(0, 1)$ at every query
    whatever $g$ was, so its query action $a$ is independent of $g$, and its expected
    return is $E[a \cdot g]/n = E[a] \cdot E[g]/n = 0$: **chance is 0**, and no
    feed-forward policy does better in expectation. A policy that remembers the cue
    reaches the optimum; a Gaussian policy squashed into the box approaches it as its
    noise shrinks.

    **Arguments:**

    - `delay`: steps from the cue to the query, `>= 1`.
    - `cue_size`: the number $n$ of target coordinates (and of action coordinates).

    **Raises:**

    `ValueError` for `delay < 1` or `cue_size < 1`.
    """

    delay: int = eqx.field(static=True)
    cue_size: int = eqx.field(static=True)

    def __init__(self, delay: int = 16, cue_size: int = 1):
        if not isinstance(delay, int) or delay < 1:
            raise ValueError(f"MemoryTask needs an integer delay >= 1, got {delay!r}.")
        if not isinstance(cue_size, int) or cue_size < 1:
            raise ValueError(f"MemoryTask needs an integer cue_size >= 1, got {cue_size!r}.")
        self.delay = delay
        self.cue_size = cue_size

    @property
    def observation_size(self) -> int:
        return self.cue_size + 1

    @property
    def action_size(self) -> int:
        return self.cue_size

    @property
    def discrete(self) -> bool:
        return False

    @property
    def action_space(self) -> distrax.Bijector | None:
        return BoxSpace(-1.0, 1.0)

    @property
    def name(self) -> str:
        return f"memory-d{self.delay}-c{self.cue_size}"

    optimum_return = 1.0
    """The best expected return: act on the remembered cue."""

    chance_return = 0.0
    """The best expected return of any feed-forward (memoryless) policy."""

    def _observe(self, state: MemoryState) -> Float[Array, " obs"]:
        cue = jnp.where(state.time == 0, state.target, 0.0)
        query = jnp.where(state.time == self.delay, 1.0, 0.0).reshape(1)
        return jnp.concatenate([cue, query])

    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[Float[Array, " obs"], MemoryState]:
        del params
        sign = jax.random.bernoulli(key, 0.5, (self.cue_size,))
        target = jnp.where(sign, 1.0, -1.0)
        state = MemoryState(target, jnp.zeros((), jnp.int32))
        return self._observe(state), state

    def step(
        self,
        key: PRNGKeyArray,
        env_state: MemoryState,
        action: EnvAction,
        params: PyTree,
    ) -> StepResult:
        del key, params
        query = env_state.time == self.delay
        score = jnp.mean(jnp.asarray(action, jnp.float32) * env_state.target)
        reward = jnp.where(query, score, 0.0)
        state = MemoryState(env_state.target, env_state.time + 1)
        return self._observe(state), state, reward, query, jnp.zeros((), bool), {}


class HideObservation(Environment):
    """Hide chosen entries of another environment's observations, e.g. the velocities
    of CartPole (`hide=(1, 3)`), to make a fully observed task partially observed.

    **Arguments:**

    - `env`: the wrapped [`eqx_lstm_ac.Environment`][].
    - `hide`: indices of the observation entries to remove.

    **Raises:**

    `ValueError` if an index is out of range, repeated, or every entry would be hidden.
    """

    env: Environment
    keep: tuple[int, ...] = eqx.field(static=True)
    hide: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, env: Environment, hide: tuple[int, ...] | list[int]):
        hide = tuple(int(i) for i in hide)
        n = env.observation_size
        bad = [i for i in hide if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"Cannot hide observation entries {bad}: {env.name} has {n} entries "
                f"(indices 0..{n - 1})."
            )
        if len(set(hide)) != len(hide):
            raise ValueError(f"Repeated index in hide={list(hide)}.")
        keep = tuple(i for i in range(n) if i not in hide)
        if not keep:
            raise ValueError(f"hide={list(hide)} would hide every observation entry.")
        self.env = env
        self.keep = keep
        self.hide = tuple(sorted(hide))

    @property
    def observation_size(self) -> int:
        return len(self.keep)

    @property
    def action_size(self) -> int:
        return self.env.action_size

    @property
    def discrete(self) -> bool:
        return self.env.discrete

    @property
    def action_space(self) -> distrax.Bijector | None:
        return self.env.action_space

    @property
    def default_params(self) -> PyTree:
        return self.env.default_params

    @property
    def name(self) -> str:
        return f"{self.env.name}-hide{''.join(str(i) for i in self.hide)}"

    def _select(self, obs: Array) -> Array:
        return obs[jnp.asarray(self.keep, jnp.int32)]

    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[Float[Array, " obs"], PyTree]:
        obs, state = self.env.reset(key, params)
        return self._select(obs), state

    def step(
        self, key: PRNGKeyArray, env_state: PyTree, action: EnvAction, params: PyTree
    ) -> StepResult:
        obs, state, reward, terminated, truncated, info = self.env.step(
            key, env_state, action, params
        )
        return self._select(obs), state, reward, terminated, truncated, info


def box_space(low: Any, high: Any, shape: tuple[int, ...], name: str) -> BoxSpace:
    """The [`eqx_lstm_ac.BoxSpace`][] of a 1-D (or scalar) `Box` with bounds `low` and
    `high` (numbers, or arrays of `shape`): numbers where every coordinate has the same
    bounds, one bound per coordinate otherwise.

    **Raises:**

    `ValueError` for a Box of more than one axis, or infinite bounds.
    """
    if len(shape) > 1:
        raise ValueError(f"{name}: only a 1-D Box of actions is supported, got shape {shape}.")
    size = int(shape[0]) if shape else 1
    lo = np.broadcast_to(np.asarray(low, np.float64), (size,))
    hi = np.broadcast_to(np.asarray(high, np.float64), (size,))
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"{name}: the action Box must be bounded, got low={lo}, high={hi}.")
    if np.all(lo == lo[0]) and np.all(hi == hi[0]):
        return BoxSpace(float(lo[0]), float(hi[0]))
    return BoxSpace(tuple(lo), tuple(hi))


class GymnaxEnv(Environment):
    """A gymnax environment as an [`eqx_lstm_ac.Environment`][] (needs the optional
    extra: `pip install 'eqx_lstm_ac[gymnax]'`).

    Termination and truncation are kept apart: `terminated` is the environment's own
    terminal condition, `truncated` its time limit (`params.max_steps_in_episode`).
    A `Discrete` action space gives a discrete environment; a `Box` gives a continuous
    one with actions squashed into its bounds by [`eqx_lstm_ac.BoxSpace`][] (one bound
    per coordinate where they differ). Observations of any shape (MinAtar's
    `10 x 10 x C` images, bsuite's grids) are flattened to vectors of floats.

    **Arguments:**

    - `env_id`: a name registered with gymnax, e.g. `"CartPole-v1"` or `"Pendulum-v1"`.

    **Raises:**

    `ImportError` if gymnax is not installed; `ValueError` for an unknown name or an
    unsupported action space.
    """

    env_id: str = eqx.field(static=True)
    env: Any = eqx.field(static=True)
    params: PyTree
    _box: BoxSpace | None = eqx.field(static=True)

    def __init__(self, env_id: str):
        try:
            import gymnax  # pyright: ignore[reportMissingImports]
            from gymnax.environments import spaces  # pyright: ignore[reportMissingImports]
        except ImportError:
            raise ImportError(
                "gymnax environments need the optional extra: pip install 'eqx_lstm_ac[gymnax]'."
            ) from None
        if env_id not in gymnax.registered_envs:
            raise ValueError(
                f"Unknown gymnax environment {env_id!r}; known: "
                f"{', '.join(gymnax.registered_envs)}."
            )
        env, params = gymnax.make(env_id)
        space = env.action_space(params)
        if isinstance(space, spaces.Discrete):
            box = None
        elif isinstance(space, spaces.Box):
            box = box_space(space.low, space.high, space.shape, env_id)
        else:
            raise ValueError(f"{env_id}: unsupported action space {type(space).__name__}.")
        self.env_id = env_id
        self.env = env
        self.params = params
        self._box = box

    # The sizes are read from gymnax's own spaces (at trace time, in Python), so they
    # cannot drift from the environment they describe.

    @property
    def observation_size(self) -> int:
        shape = self.env.observation_space(self.params).shape
        return int(np.prod(shape, dtype=np.int64))

    @property
    def action_size(self) -> int:
        space = self.env.action_space(self.params)
        if self._box is None:
            return int(space.n)
        return int(space.shape[0]) if space.shape else 1

    @property
    def discrete(self) -> bool:
        return self._box is None

    @property
    def action_space(self) -> distrax.Bijector | None:
        return self._box

    @property
    def default_params(self) -> PyTree:
        return self.params

    @property
    def name(self) -> str:
        return self.env_id

    def reset(self, key: PRNGKeyArray, params: PyTree) -> tuple[Float[Array, " obs"], PyTree]:
        obs, state = self.env.reset_env(key, params)
        return jnp.asarray(obs, jnp.float32).reshape(-1), state

    def step(
        self, key: PRNGKeyArray, env_state: PyTree, action: EnvAction, params: PyTree
    ) -> StepResult:
        obs, state, reward, terminated, info = self.env.step_env(key, env_state, action, params)
        truncated = jnp.logical_and(
            jnp.asarray(self.env.is_truncated(state, params), bool),
            ~jnp.asarray(terminated, bool),
        )
        return (
            jnp.asarray(obs, jnp.float32).reshape(-1),
            state,
            jnp.asarray(reward, jnp.float32).reshape(()),
            jnp.asarray(terminated, bool).reshape(()),
            truncated.reshape(()),
            info,
        )


TASKS = ("memory", "gymnax:<name>")

ENVIRONMENTS: dict[str, Callable[..., Environment]] = {}
"""Environments of your own, by name, for [`eqx_lstm_ac.make_env`][] and `--env`: add one
with [`eqx_lstm_ac.register_env`][]."""


def register_env(name: str, factory: Callable[..., Environment]) -> None:
    """Make an environment of your own available by `name` to
    [`eqx_lstm_ac.make_env`][], [`eqx_lstm_ac.fit`][] and the command line:
    `--env NAME` or `--env NAME:option=value,...` calls `factory(option=value, ...)`
    (integer options).

    Nothing is imported by name: the program that trains (or resumes, or evaluates) a
    run of such an environment registers it first, e.g. a script ending in
    `eqx_lstm_ac.cli()` that you run as `python my_script.py train --env NAME`.

    **Raises:**

    `ValueError` for a name that is taken by a built-in task or is not a plain word.
    """
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"An environment name is a plain word like 'beacon'; got {name!r}.")
    if name in ("memory", "gymnax"):
        raise ValueError(f"{name!r} is a built-in task; choose another name.")
    if not callable(factory):
        raise ValueError(f"register_env needs a callable factory; got {factory!r}.")
    ENVIRONMENTS[name] = factory


def _parse_options(text: str, spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise ValueError(
                f"Bad option {item!r} in task {spec!r}; write e.g. memory:delay=16,cue_size=1."
            )
        out[name.strip()] = int(value)
    return out


def make_env(spec: str, hide: tuple[int, ...] | list[int] = ()) -> Environment:
    """An environment from a short text description, as the command line takes it.

    **Arguments:**

    - `spec`: `"memory"` (the built-in [`eqx_lstm_ac.MemoryTask`][]), optionally with
      options `"memory:delay=16,cue_size=1"`, `"gymnax:<name>"` for a gymnax
      environment (e.g. `"gymnax:CartPole-v1"`), or the name of an environment of your
      own ([`eqx_lstm_ac.register_env`][]), with options the same way.
    - `hide`: observation entries to hide ([`eqx_lstm_ac.HideObservation`][]).

    **Returns:**

    The [`eqx_lstm_ac.Environment`][].

    **Raises:**

    `ValueError` for an unknown task or bad options; `ImportError` for a gymnax task
    without gymnax installed.
    """
    family, _, rest = spec.partition(":")
    env: Environment
    if family == "memory":
        opts = _parse_options(rest, spec)
        unknown = set(opts) - {"delay", "cue_size"}
        if unknown:
            raise ValueError(
                f"Unknown option(s) {sorted(unknown)} for the memory task; it takes delay "
                "and cue_size."
            )
        env = MemoryTask(**opts)
    elif family == "gymnax":
        if not rest:
            raise ValueError("Name the gymnax environment, e.g. gymnax:CartPole-v1.")
        env = GymnaxEnv(rest)
    elif family in ENVIRONMENTS:
        try:
            env = ENVIRONMENTS[family](**_parse_options(rest, spec))
        except TypeError as e:
            raise ValueError(f"{spec}: {e}") from None
        if not isinstance(env, Environment):
            raise ValueError(
                f"The factory registered as {family!r} returned {type(env).__name__}, not "
                "an eqx_lstm_ac.Environment."
            )
    else:
        mine = "".join(f", {name!r}" for name in ENVIRONMENTS)
        raise ValueError(
            f"Unknown task {spec!r}; expected 'memory' (or 'memory:delay=N,cue_size=N'), "
            f"'gymnax:<name>' (e.g. gymnax:CartPole-v1){mine} or a name given to "
            "register_env."
        )
    if hide:
        env = HideObservation(env, hide)
    return env
