"""The table of models: the one place a new model is added."""

from typing import Any

import distrax
from jaxtyping import PRNGKeyArray

from ._actor_critic import AbstractActorCritic
from ._baseline import MLPActorCritic
from ._config import ModelConfig
from ._model import LSTMActorCritic


MODELS: dict[str, type[AbstractActorCritic]] = {
    "lstm": LSTMActorCritic,
    "mlp": MLPActorCritic,
}
"""The models by short name (`--model` on the command line). A checkpoint names its
model by class name, looked up among these; nothing else is ever built from a file."""


def model_class(name: str) -> type[AbstractActorCritic]:
    """The model class called `name` in [`eqx_lstm_ac.MODELS`][], by short name
    (`"lstm"`) or class name (`"LSTMActorCritic"`).

    **Raises:**

    `ValueError` for a name that is in neither form.
    """
    if name in MODELS:
        return MODELS[name]
    for cls in MODELS.values():
        if cls.__name__ == name:
            return cls
    raise ValueError(
        f"Unknown model {name!r}; expected one of {sorted(MODELS)} (or their class names "
        f"{sorted(cls.__name__ for cls in MODELS.values())})."
    )


def make_model(
    env: Any,
    model: str = ModelConfig.model,
    hidden_features: int = ModelConfig.hidden_features,
    features: int = ModelConfig.features,
    activation: str = ModelConfig.activation,
    *,
    key: PRNGKeyArray,
    action_space: distrax.Bijector | None = None,
) -> AbstractActorCritic:
    """A model with the sizes and action space of `env`; the defaults are those of
    [`eqx_lstm_ac.ModelConfig`][].

    **Arguments:**

    - `env`: the [`eqx_lstm_ac.Environment`][] to act in.
    - `model`: a name in [`eqx_lstm_ac.MODELS`][]: `"lstm"` for
      [`eqx_lstm_ac.LSTMActorCritic`][], `"mlp"` for the feed-forward baseline
      [`eqx_lstm_ac.MLPActorCritic`][].
    - `hidden_features`: the encoder's width.
    - `features`: the torso's output width (`lstm_features` of the LSTM, the second
      layer of the MLP).
    - `activation`: the encoder's activation, by name.
    - `key`: a `jax.random.key`. (Keyword only.)
    - `action_space`: the action-space bijector; `env.action_space` if `None`.

    **Returns:**

    The model (without its initial state: make one with `model.init_state(...)`).

    **Raises:**

    `ValueError` for an unknown `model` or invalid sizes.
    """
    cls = model_class(model)
    return cls.make(
        env.observation_size,
        env.action_size,
        hidden_features=hidden_features,
        features=features,
        activation=activation,
        action_space=env.action_space if action_space is None else action_space,
        discrete=env.discrete,
        key=key,
    )
