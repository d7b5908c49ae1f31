"""Action spaces: bijectors that map an unconstrained Gaussian sample to a valid action.

Every space here keeps its parameters as Python floats (or tuples of them). A distrax
bijector is a pytree whose leaves are the JAX arrays in its `__dict__`; holding floats
only, these bijectors have no leaves at all, so they ride along inside an `eqx.Module`
without interfering with `eqx.tree_at`, `eqx.filter_grad` or `eqx.filter_jit`.
"""

import math
from typing import Any, ClassVar

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


_LOG2 = math.log(2.0)


def _log_sech2(z: Array) -> Array:
    """`log(1 - tanh(z)^2)`, stable for every `z` (no cancellation when `|z|` is big)."""
    a = jnp.abs(z)
    return 2.0 * (_LOG2 - a - jax.nn.softplus(-2.0 * a))


def _require(space: str, **checks: tuple[float, bool, str]) -> None:
    """Raise `ValueError` for the first `name=(value, ok, wanted)` that is not `ok`."""
    for name, (value, ok, wanted) in checks.items():
        if not ok:
            raise ValueError(f"{space} needs {name} {wanted}, got {name}={value}.")


def _atanh(u: Array) -> Array:
    return 0.5 * (jnp.log1p(u) - jnp.log1p(-u))


class ActionSpace(distrax.Bijector):
    """Base class of the action spaces shipped with `eqx_lstm_ac`.

    An action space is a [`distrax.Bijector`](https://github.com/google-deepmind/distrax)
    whose parameters are plain Python floats, and which can describe itself
    (`kind`, `config()`) so that a checkpoint can rebuild it without running code.
    """

    kind: ClassVar[str]

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this space: `type(self)(**config())`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.config().items()))))

    def same_as(self, other: distrax.Bijector) -> bool:
        return self == other


class FreeSpace(ActionSpace):
    """Unbounded actions: the identity map $y = x$.

    The policy is then a plain diagonal Gaussian and its entropy is exact.
    """

    kind: ClassVar[str] = "FreeSpace"

    def __init__(self):
        super().__init__(event_ndims_in=0, is_constant_jacobian=True)

    def config(self) -> dict[str, Any]:
        return {}

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        return x, jnp.zeros_like(x)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        return y, jnp.zeros_like(y)


Bound = float | tuple[float, ...]
"""A bound of [`eqx_lstm_ac.BoxSpace`][]: one number for every coordinate, or one per
coordinate."""


def _bound(name: str, value: Any) -> Bound:
    """`value` as a float or a tuple of floats (hashable, no JAX arrays: see above)."""
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"BoxSpace needs {name} as a number or a sequence of numbers, got {value!r}."
        ) from None
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(
            f"BoxSpace needs {name} as a number or a 1-D sequence, got shape {arr.shape}."
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"BoxSpace needs finite bounds, got {name}={value!r}.")
    return float(arr) if arr.ndim == 0 else tuple(float(v) for v in arr)


def _as(value: Bound, like: Array) -> Array:
    """A bound (or a quantity made from it) broadcast to the shape of `like`."""
    return jnp.broadcast_to(jnp.asarray(value, like.dtype), like.shape)


class BoxSpace(ActionSpace):
    r"""Actions in a box, each coordinate squashed independently:

    $$y = c + (1 - \epsilon)\,h \tanh(x / w), \qquad c = \frac{x_{max} + x_{min}}{2},\quad
    h = \frac{x_{max} - x_{min}}{2}.$$

    The factor $1 - \epsilon$ keeps every action inside the box in float32 too, where
    $\tanh$ rounds to one.

    **Arguments:**

    - `x_min`, `x_max`: the bounds: numbers (the same for every coordinate), or
      sequences (or 1-D arrays) with one bound per action coordinate, `x_min < x_max`
      everywhere. They are kept as Python floats and recorded in checkpoints.
    - `width`: the scale $w$ of the unconstrained variable that maps onto the box.
    - `eps`: the shrink factor above; the inverse clips $(y - c)/((1-\epsilon) h)$ to
      $[-1 + \epsilon, 1 - \epsilon]$ so that an action on the boundary still has a
      finite pre-image. Inside that range the inverse is the exact inverse of the
      forward map.

    **Raises:**

    `ValueError` if a bound is not a number or a 1-D sequence of finite numbers, the
    two bounds have different lengths, `x_max <= x_min` anywhere, `width <= 0` or `eps`
    is not in `(0, 1)`.
    """

    kind: ClassVar[str] = "BoxSpace"

    def __init__(self, x_min: Any, x_max: Any, width: float = 1.0, eps: float = 1e-6):
        lo, hi = _bound("x_min", x_min), _bound("x_max", x_max)
        width, eps = float(width), float(eps)
        if isinstance(lo, tuple) and isinstance(hi, tuple) and len(lo) != len(hi):
            raise ValueError(
                f"BoxSpace needs bounds of one length, got {len(lo)} values of x_min and "
                f"{len(hi)} of x_max."
            )
        if not np.all(np.asarray(hi) > np.asarray(lo)):
            raise ValueError(f"BoxSpace needs x_min < x_max, got x_min={lo}, x_max={hi}.")
        _require("BoxSpace", width=(width, width > 0, "> 0"), eps=(eps, 0 < eps < 1, "in (0, 1)"))
        super().__init__(event_ndims_in=0)
        self.x_min = lo
        self.x_max = hi
        self.width = width
        self.eps = eps

    @property
    def size(self) -> int | None:
        """The number of action coordinates the bounds are for; `None` for numbers,
        which fit any."""
        for b in (self.x_min, self.x_max):
            if isinstance(b, tuple):
                return len(b)
        return None

    @property
    def center(self) -> Bound:
        return _combine(self.x_min, self.x_max, lambda a, b: 0.5 * (b + a))

    @property
    def half(self) -> Bound:
        return _combine(self.x_min, self.x_max, lambda a, b: 0.5 * (b - a) * (1.0 - self.eps))

    def config(self) -> dict[str, Any]:
        return {"x_min": self.x_min, "x_max": self.x_max, "width": self.width, "eps": self.eps}

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        z = x / self.width
        half = _as(self.half, z)
        y = _as(self.center, z) + half * jnp.tanh(z)
        # where the shrink is below float32's resolution at a bound, rounding could
        # still land one ulp outside: the clip only ever moves such a value
        y = jnp.clip(y, _as(self.x_min, y), _as(self.x_max, y))
        return y, jnp.log(half / self.width) + _log_sech2(z)

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        half = _as(self.half, y)
        u = jnp.clip((y - _as(self.center, y)) / half, -1.0 + self.eps, 1.0 - self.eps)
        z = _atanh(u)
        return self.width * z, -(jnp.log(half / self.width) + _log_sech2(z))


def _combine(a: Bound, b: Bound, f) -> Bound:
    """`f` of two bounds, element by element (a number with a tuple broadcasts)."""
    if isinstance(a, float) and isinstance(b, float):
        return float(f(a, b))
    out = f(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return tuple(float(v) for v in np.atleast_1d(out))


class MaxNormSpace(ActionSpace):
    r"""Actions in a ball of radius `max_norm`, squashed radially:

    $$y = m' \tanh(r)\,\frac{x}{r}, \qquad r = \lVert x \rVert,\quad
    m' = (1 - \epsilon)\, m,$$

    so the direction is kept and the length is mapped into $[0, m')$: inside the ball
    in float32 too, where $\tanh$ rounds to one. Its Jacobian has
    $\log|\det J| = d\log m' + \log\operatorname{sech}^2 r + (d - 1)\log(\tanh r / r)$
    for actions of dimension $d$.

    **Arguments:**

    - `max_norm`: the radius $m > 0$ of the ball.
    - `eps`: the shrink factor above; the inverse clips $\lVert y \rVert / m'$ to at
      most $1 - \epsilon$.

    **Raises:**

    `ValueError` if `max_norm <= 0` or `eps` is not in `(0, 1)`.
    """

    kind: ClassVar[str] = "MaxNormSpace"

    def __init__(self, max_norm: float = 1.0, eps: float = 1e-6):
        max_norm, eps = float(max_norm), float(eps)
        _require(
            "MaxNormSpace",
            max_norm=(max_norm, max_norm > 0, "> 0"),
            eps=(eps, 0 < eps < 1, "in (0, 1)"),
        )
        super().__init__(event_ndims_in=1)
        self.max_norm = max_norm
        self.eps = eps

    @property
    def radius(self) -> float:
        """The radius the actions stay within: `max_norm * (1 - eps)`, inside the ball
        in float32 too."""
        return self.max_norm * (1.0 - self.eps)

    def config(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, "eps": self.eps}

    def forward_and_log_det(self, x: Array) -> tuple[Array, Array]:
        d = x.shape[-1]
        r2 = jnp.sum(x * x, axis=-1, keepdims=True)
        small = r2 < 1e-8
        r = jnp.sqrt(jnp.where(small, 1.0, r2))  # never sqrt(0): keeps gradients finite
        # tanh(r) / r and log(tanh(r) / r), with their Taylor series near 0
        ratio = jnp.where(small, 1.0 - r2 / 3.0, jnp.tanh(r) / r)
        log_ratio = jnp.where(small, -r2 / 3.0, jnp.log(jnp.tanh(r) / r))
        y = self.radius * ratio * x
        logdet = d * math.log(self.radius) + _log_sech2(r) + (d - 1) * log_ratio
        series = d * math.log(self.radius) - r2 - (d - 1) * r2 / 3.0
        logdet = jnp.where(small, series, logdet)
        return y, logdet[..., 0]

    def inverse_and_log_det(self, y: Array) -> tuple[Array, Array]:
        u2 = jnp.sum(y * y, axis=-1, keepdims=True) / self.radius**2
        small = u2 < 1e-8
        u = jnp.sqrt(jnp.where(small, 1.0, u2))
        u_clip = jnp.minimum(u, 1.0 - self.eps)
        r = _atanh(u_clip)
        # x = y * r / (m u): atanh(u) / u -> 1 + u^2 / 3 near 0
        scale = jnp.where(small, 1.0 + u2 / 3.0, r / u) / self.radius
        x = y * scale
        _, logdet = self.forward_and_log_det(x)
        return x, -logdet


ACTION_SPACES: dict[str, type[ActionSpace]] = {
    cls.kind: cls for cls in (FreeSpace, BoxSpace, MaxNormSpace)
}
"""The fixed table of action spaces a checkpoint may name."""


def _lift(bijector: distrax.Bijector) -> distrax.Bijector:
    """Lift a scalar bijector to act on a vector of actions."""
    if bijector.event_ndims_in == 0:
        return distrax.Block(bijector, ndims=1)
    if bijector.event_ndims_in == 1:
        return bijector
    raise ValueError(
        "An action-space bijector must act on scalars (event_ndims_in == 0) or on "
        f"action vectors (event_ndims_in == 1), got event_ndims_in == "
        f"{bijector.event_ndims_in}."
    )


def _unlift(bijector: distrax.Bijector) -> distrax.Bijector:
    """The bijector a user passed in, before `_lift`."""
    if isinstance(bijector, distrax.Block):
        return bijector.bijector
    return bijector


def _probe(bijector: distrax.Bijector, size: int) -> list[float]:
    """What the lifted `bijector` makes of a fixed vector of `size` actions: a
    fingerprint of a user-defined space, which a file cannot rebuild."""
    x = jnp.linspace(-1.5, 1.5, size, dtype=jnp.float32)
    y = _lift(_unlift(bijector)).forward(x)
    try:
        values = np.asarray(y)
    except jax.errors.TracerArrayConversionError:  # inside a trace (`eval_shape`): no values
        return []
    return [float(v) for v in values.reshape(-1)]


def describe_space(
    bijector: distrax.Bijector | None, size: int | None = None
) -> dict[str, Any] | None:
    """How a checkpoint names an action space: `{"type": kind, "args": config}` for a
    space of [`eqx_lstm_ac.ACTION_SPACES`][], `{"type": "custom", "class": name}` for a
    user-defined bijector (which a file cannot rebuild), `None` for none (discrete).
    With the number of action coordinates `size`, a user-defined space's description
    also holds `probe`, its actions for a fixed input, so that loading can tell a
    different space of the same class."""
    if bijector is None:
        return None
    space = _unlift(bijector)
    if isinstance(space, ActionSpace):
        return {"type": space.kind, "args": space.config()}
    desc: dict[str, Any] = {"type": "custom", "class": type(space).__qualname__}
    if size is not None:
        desc["probe"] = _probe(space, size)
    return desc


def _is_number_or_numbers(v: Any) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return number(v) or (isinstance(v, (list, tuple)) and all(map(number, v)))


def space_from_description(
    desc: Any, given: distrax.Bijector | None = None
) -> distrax.Bijector | None:
    """The action space that `describe_space` described as `desc`.

    **Arguments:**

    - `desc`: the description.
    - `given`: a bijector passed by the caller: required for a user-defined space, which
      only its class name describes; otherwise it must be the space described.

    **Raises:**

    `ValueError` for a corrupt description, a user-defined space without `given`, or a
    `given` space that is not the one described.
    """
    if desc is None:
        if given is not None:
            raise ValueError(
                f"The model has no action space (discrete actions); got action_space={given!r}."
            )
        return None
    if not isinstance(desc, dict) or not isinstance(desc.get("type"), str):
        raise ValueError(f"bad action_space description {desc!r}.")
    kind = desc["type"]
    if kind == "custom":
        name = desc.get("class")
        if given is None:
            raise ValueError(
                f"the model was saved with a user-defined action space ({name!r}); pass it "
                "again: load(path, action_space=...)."
            )
        if type(_unlift(given)).__qualname__ != name:
            raise ValueError(
                f"the model was saved with the action space {name!r}; got "
                f"{type(_unlift(given)).__qualname__!r}."
            )
        probe = desc.get("probe")
        if isinstance(probe, list) and probe and all(map(_is_number_or_numbers, probe)):
            got = _probe(given, len(probe))
            if got and not np.allclose(got, probe, rtol=1e-5, atol=1e-6):
                raise ValueError(
                    f"the action space given, {given!r}, maps actions differently from the "
                    f"{name} the model was saved with (for a fixed input it gives "
                    f"{np.round(got, 4).tolist()}, the saved one {np.round(probe, 4).tolist()})."
                )
        return given
    if kind not in ACTION_SPACES:
        raise ValueError(
            f"unknown action space {kind!r}; expected one of {sorted(ACTION_SPACES)} or 'custom'."
        )
    args = desc.get("args", {})
    if not isinstance(args, dict) or not all(map(_is_number_or_numbers, args.values())):
        raise ValueError(f"bad action_space args {args!r}.")
    try:
        space = ACTION_SPACES[kind](**args)
    except TypeError as e:
        raise ValueError(f"bad action_space args {args!r} for {kind} ({e}).") from None
    if given is not None and not (
        isinstance(_unlift(given), ActionSpace) and _unlift(given) == space
    ):
        raise ValueError(f"the model was saved with the action space {space!r}; got {given!r}.")
    return space
