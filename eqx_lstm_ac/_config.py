"""The settings of a training run, in one place: [`eqx_lstm_ac.PPOConfig`][] (the
algorithm), [`eqx_lstm_ac.ModelConfig`][] (the model) and [`eqx_lstm_ac.RunConfig`][]
(the task, the seed and both of those).

Every default and every help text is written here once. The command line's options are
generated from these fields (`option` records the flag and the help), and the
benchmarks and the docs read the same dataclasses.
"""

import dataclasses
from typing import Any, Literal


DEFAULT_BPTT = 32
"""The longest training sequence `PPOConfig.bptt_chunk=None` picks."""


def option(default: Any, help: str, *, flag: str | None = None, fixed: bool = False) -> Any:
    """A dataclass field with its command-line `flag` (default: the field's name with
    dashes), its `help` text, and whether it is `fixed` for a run (resuming with another
    value is refused)."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag, "fixed": fixed})


def flag_of(field: dataclasses.Field) -> str:
    """The command-line flag of a config field, without the leading dashes."""
    return field.metadata.get("flag") or field.name.replace("_", "-")


def _check_positive_ints(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _from_dict(cls: Any, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} needs a dict of fields, got {type(data).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} field(s): {sorted(unknown)}.")
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The hyperparameters of [`eqx_lstm_ac.PPO`][]. The defaults are those of
    `eqx-lstm-ac train`.

    The default rollout, 16 environments of 128 steps (2048 steps per update), keeps
    each update's data fresh: on the tasks of the learning benchmark it reaches the goal
    in fewer environment steps than larger rollouts do. More environments raise the
    throughput (on an accelerator above all) at the price of more steps per update.

    **Arguments:**

    - `num_envs`: environments stepped in parallel.
    - `num_steps`: rollout length per environment and update.
    - `total_steps`: the budget in environment steps; the number of updates is
      `total_steps // (num_envs * num_steps)`, at least one (a smaller budget is
      refused), and sets the length of the learning-rate schedule.
    - `num_epochs`: passes over each rollout.
    - `num_minibatches`: minibatches per epoch; each holds
      `num_envs * (num_steps // bptt_chunk) / num_minibatches` whole sequences.
    - `bptt_chunk`: truncated BPTT length: the rollout is cut into sequences of this many
      steps, each started from the carry stored at its first step; `num_steps` for
      whole rollouts. `None` (default): the largest divisor of `num_steps` up to
      `DEFAULT_BPTT` (32).
    - `gamma`, `gae_lambda`: discount and GAE parameter.
    - `reward_scale`: rewards are multiplied by this for the advantages and value
      targets (not in the reported returns); a fixed factor, which the reward
      normalisation makes irrelevant unless it is off.
    - `clip_eps`: the policy-ratio clip range.
    - `clip_value`: the value clip range around the rollout's values; `None` for an
      unclipped value loss.
    - `vf_coef`, `ent_coef`: weights of the value loss and of the entropy bonus.
    - `learning_rate`: the initial learning rate of Adam.
    - `lr_schedule`: `"linear"` (decay to zero over the budget), `"cosine"` or
      `"constant"`.
    - `max_grad_norm`: global-norm gradient clipping.
    - `normalize_advantages`: normalise advantages per minibatch.
    - `normalize_observations`: give the model running observation moments
      ([`eqx_lstm_ac.AbstractActorCritic.obs_norm`][]), updated after every rollout from
      its observations and saved with the model.
    - `normalize_rewards`: divide the rewards (after `reward_scale`) by the running
      standard deviation of the discounted return, for the advantages and value
      targets; the reported returns stay raw.

    **Raises:**

    `ValueError` for a value out of range or sizes that do not divide.
    """

    num_envs: int = option(16, "parallel environments", fixed=True)
    num_steps: int = option(128, "rollout length per environment and update", fixed=True)
    total_steps: int = option(2_000_000, "environment steps to train for")
    num_epochs: int = option(4, "PPO epochs per rollout", flag="epochs", fixed=True)
    num_minibatches: int = option(8, "minibatches per epoch", flag="minibatches", fixed=True)
    bptt_chunk: int | None = option(
        None,
        "truncated BPTT length, a divisor of --num-steps (default: the largest divisor up "
        "to 32)",
        flag="bptt",
        fixed=True,
    )
    gamma: float = option(0.99, "discount", fixed=True)
    gae_lambda: float = option(0.95, "GAE lambda", fixed=True)
    reward_scale: float = option(
        1.0, "multiply rewards by this for training (a fixed factor)", fixed=True
    )
    clip_eps: float = option(0.2, "policy clip range", fixed=True)
    clip_value: float | None = option(
        0.2, "value clip range ('none' for an unclipped value loss)", fixed=True
    )
    vf_coef: float = option(0.5, "value loss weight", fixed=True)
    ent_coef: float = option(0.0, "entropy bonus weight", fixed=True)
    learning_rate: float = option(1e-3, "initial learning rate of Adam", flag="lr", fixed=True)
    lr_schedule: Literal["linear", "cosine", "constant"] = option(
        "linear", "learning-rate schedule over the budget", fixed=True
    )
    max_grad_norm: float = option(0.5, "global-norm gradient clipping", fixed=True)
    normalize_advantages: bool = option(True, "normalise advantages per minibatch", fixed=True)
    normalize_observations: bool = option(
        True,
        "normalise observations by their running mean and variance (saved with the model)",
        fixed=True,
    )
    normalize_rewards: bool = option(
        True,
        "divide rewards by the running standard deviation of the discounted return",
        fixed=True,
    )

    def __post_init__(self):
        _check_positive_ints(self, ("num_envs", "num_steps", "num_epochs", "num_minibatches"))
        if not isinstance(self.total_steps, int) or isinstance(self.total_steps, bool):
            raise ValueError(f"total_steps must be an integer, got {self.total_steps!r}.")
        if self.total_steps < self.steps_per_update:
            raise ValueError(
                f"total_steps={self.total_steps} is less than one update (num_envs x "
                f"num_steps = {self.steps_per_update} environment steps)."
            )
        chunk = self.sequence_length
        if not isinstance(chunk, int) or chunk < 1 or self.num_steps % chunk != 0:
            raise ValueError(
                f"bptt_chunk={self.bptt_chunk} must be a positive divisor of "
                f"num_steps={self.num_steps}."
            )
        if self.num_sequences % self.num_minibatches != 0:
            raise ValueError(
                f"The rollout holds {self.num_sequences} sequences (num_envs={self.num_envs} "
                f"x {self.num_steps // chunk} chunks), which num_minibatches="
                f"{self.num_minibatches} does not divide."
            )
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
        for name in ("clip_eps", "learning_rate", "max_grad_norm", "reward_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("vf_coef", "ent_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}.")
        if self.clip_value is not None and not self.clip_value > 0:
            raise ValueError(f"clip_value must be positive or None, got {self.clip_value!r}.")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            raise ValueError(
                f"lr_schedule must be 'linear', 'cosine' or 'constant', got {self.lr_schedule!r}."
            )
        for name in ("normalize_advantages", "normalize_observations", "normalize_rewards"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    @property
    def sequence_length(self) -> int:
        """The length of a training sequence: `bptt_chunk`, or the largest divisor of
        `num_steps` up to `DEFAULT_BPTT`."""
        if self.bptt_chunk is not None:
            return self.bptt_chunk
        n = self.num_steps
        return max(d for d in range(1, min(n, DEFAULT_BPTT) + 1) if n % d == 0)

    @property
    def num_sequences(self) -> int:
        """Training sequences per rollout."""
        return self.num_envs * (self.num_steps // self.sequence_length)

    @property
    def steps_per_update(self) -> int:
        """Environment steps per update, `num_envs * num_steps`."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Updates in the budget: `total_steps // steps_per_update`, at least one."""
        return self.total_steps // self.steps_per_update

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PPOConfig":
        """The inverse of `to_dict`.

        **Raises:**

        `ValueError` for unknown fields or invalid values."""
        return _from_dict(cls, data)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model to train and its sizes, as [`eqx_lstm_ac.make_model`][] takes them.

    **Arguments:**

    - `model`: a name in [`eqx_lstm_ac.MODELS`][] (`"lstm"`, or the feed-forward
      baseline `"mlp"`).
    - `hidden_features`: the encoder's width.
    - `features`: the torso's output width (the LSTM's size, the MLP's second layer).
    - `activation`: the encoder's activation, a name in [`eqx_lstm_ac.ACTIVATIONS`][].
    """

    model: str = option("lstm", "the model: lstm, or the feed-forward baseline mlp", fixed=True)
    hidden_features: int = option(64, "encoder width", flag="hidden", fixed=True)
    features: int = option(64, "LSTM size, or the MLP's second layer", fixed=True)
    activation: str = option("gelu", "encoder activation", fixed=True)

    def __post_init__(self):
        _check_positive_ints(self, ("hidden_features", "features"))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """The inverse of `to_dict`."""
        return _from_dict(cls, data)

    def make(self, env: Any, *, key: Any) -> Any:
        """This model for `env`: [`eqx_lstm_ac.make_model`][] with these fields."""
        from ._registry import make_model  # the registry imports this module

        return make_model(
            env,
            self.model,
            hidden_features=self.hidden_features,
            features=self.features,
            activation=self.activation,
            key=key,
        )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run: what `run.json` of a run directory holds.

    **Arguments:**

    - `env`: the task, as [`eqx_lstm_ac.make_env`][] takes it: `"memory"`,
      `"memory:delay=N,cue_size=N"` or `"gymnax:NAME"`.
    - `hide`: observation indices to hide, e.g. `(1, 3)` for CartPole's velocities.
    - `seed`: the random seed.
    - `model`: the [`eqx_lstm_ac.ModelConfig`][].
    - `ppo`: the [`eqx_lstm_ac.PPOConfig`][].
    - `checkpoint_every`: updates between checkpoints; `None` for a tenth of the run.
    """

    env: str = option(
        "memory",
        "task: 'memory', 'memory:delay=N,cue_size=N' or 'gymnax:NAME' (e.g. gymnax:CartPole-v1)",
        fixed=True,
    )
    hide: tuple[int, ...] = option(
        (), "comma-separated observation indices to hide, e.g. 1,3", fixed=True
    )
    seed: int = option(0, "random seed", fixed=True)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    checkpoint_every: int | None = option(
        None, "updates between checkpoints (default: a tenth of the run)"
    )

    def __post_init__(self):
        if not isinstance(self.env, str) or not self.env:
            raise ValueError(f"env must be a task name, got {self.env!r}.")
        hide = tuple(self.hide)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in hide):
            raise ValueError(f"hide must be observation indices, got {self.hide!r}.")
        object.__setattr__(self, "hide", hide)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}.")
        if self.checkpoint_every is not None:
            _check_positive_ints(self, ("checkpoint_every",))

    @property
    def checkpoint_interval(self) -> int:
        """Updates between checkpoints: `checkpoint_every`, or a tenth of the run."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, self.ppo.num_updates // 10)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (nested for `model` and `ppo`)."""
        return {
            "env": self.env,
            "hide": list(self.hide),
            "seed": self.seed,
            "model": self.model.to_dict(),
            "ppo": self.ppo.to_dict(),
            "checkpoint_every": self.checkpoint_every,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """The inverse of `to_dict`.

        **Raises:**

        `ValueError` for unknown fields or invalid values."""
        if not isinstance(data, dict):
            raise ValueError(f"RunConfig needs a dict of fields, got {type(data).__name__}.")
        data = dict(data)
        if "model" in data:
            data["model"] = ModelConfig.from_dict(data["model"])
        if "ppo" in data:
            data["ppo"] = PPOConfig.from_dict(data["ppo"])
        if isinstance(data.get("hide"), list):
            data["hide"] = tuple(data["hide"])
        return _from_dict(cls, data)


SECTIONS: dict[str, type] = {"": RunConfig, "model": ModelConfig, "ppo": PPOConfig}
"""The dataclasses of a run's settings, by their field in [`eqx_lstm_ac.RunConfig`][]
(`""` for its own fields): the table the command line is generated from."""


def settable_fields() -> list[tuple[str, dataclasses.Field]]:
    """Every setting as `(path, field)`, `path` like `"ppo.learning_rate"`; the nested
    `model` and `ppo` fields of [`eqx_lstm_ac.RunConfig`][] are expanded."""
    out = []
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            if section == "" and field.name in SECTIONS:
                continue
            out.append((f"{section}.{field.name}" if section else field.name, field))
    return out


def with_settings(
    base: RunConfig, settings: dict[str, Any], *, resuming: bool = False
) -> RunConfig:
    """`base` with `settings` applied: `{path: value}`, each path a field of
    [`eqx_lstm_ac.RunConfig`][] (`"env"`, `"seed"`, ...), of its
    [`eqx_lstm_ac.ModelConfig`][] (`"model.hidden_features"`) or of its
    [`eqx_lstm_ac.PPOConfig`][] (`"ppo.total_steps"`). Every value is checked as the
    constructors check it.

    !!! example
        ```python
        import eqx_lstm_ac as lac

        config = lac.with_settings(
            lac.RunConfig(), {"env": "memory:delay=8", "ppo.learning_rate": 1e-3}
        )
        assert config.ppo.learning_rate == 1e-3
        ```

    **Raises:**

    `ValueError` for an invalid value, or, when `resuming`, for a change of a setting
    that is fixed for a run (everything but the budget and the checkpoint interval).
    """
    fields = dict(settable_fields())
    parts: dict[str, dict[str, Any]] = {"": {}, "model": {}, "ppo": {}}
    for path, value in settings.items():
        if path not in fields:
            raise ValueError(f"Unknown setting {path!r}.")
        section, _, name = path.rpartition(".")
        current = getattr(getattr(base, section) if section else base, name)
        field = fields[path]
        if resuming and field.metadata.get("fixed") and value != current:
            flag = flag_of(field)
            if section == "ppo":
                raise ValueError(
                    f"--{flag} cannot change when resuming (the run used {current!r})."
                )
            raise ValueError(
                f"The checkpoint does not match the task: it was trained with --{flag} "
                f"{current!r}, not {value!r}."
            )
        parts[section][name] = value
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, **parts["model"]),
        ppo=dataclasses.replace(base.ppo, **parts["ppo"]),
        **parts[""],
    )
