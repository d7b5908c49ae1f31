"""`eqx_lstm_ac`: a recurrent (LSTM) actor-critic for reinforcement learning, written
the Equinox way."""

from ._action_spaces import (
    ACTION_SPACES as ACTION_SPACES,
    ActionSpace as ActionSpace,
    BoxSpace as BoxSpace,
    describe_space as describe_space,
    FreeSpace as FreeSpace,
    MaxNormSpace as MaxNormSpace,
    space_from_description as space_from_description,
)
from ._actor_critic import AbstractActorCritic as AbstractActorCritic
from ._baseline import MLPActorCritic as MLPActorCritic
from ._checkpoint import load as load, read_header as read_header, save as save
from ._cli import cli as cli
from ._config import (
    ModelConfig as ModelConfig,
    PPOConfig as PPOConfig,
    RunConfig as RunConfig,
    with_settings as with_settings,
)
from ._distributions import (
    CategoricalPolicy as CategoricalPolicy,
    expected_log_det as expected_log_det,
    GaussianPolicy as GaussianPolicy,
)
from ._envs import (
    Environment as Environment,
    ENVIRONMENTS as ENVIRONMENTS,
    GymnaxEnv as GymnaxEnv,
    HideObservation as HideObservation,
    make_env as make_env,
    MemoryState as MemoryState,
    MemoryTask as MemoryTask,
    register_env as register_env,
)
from ._heads import (
    ACTIVATIONS as ACTIVATIONS,
    LogStdParameter as LogStdParameter,
    SoftplusStdHead as SoftplusStdHead,
)
from ._model import LSTMActorCritic as LSTMActorCritic, LSTMCarry as LSTMCarry
from ._normalize import RunningMoments as RunningMoments
from ._parallel import (
    check_num_envs as check_num_envs,
    DATA_AXIS as DATA_AXIS,
    data_mesh as data_mesh,
    data_parallel_grad as data_parallel_grad,
    process_slice as process_slice,
    replicate as replicate,
    shard_batch as shard_batch,
    shard_local_batch as shard_local_batch,
)
from ._ppo import ActorCritic as ActorCritic, PPO as PPO, train as train
from ._ppo_loss import Batch as Batch, compute_gae as compute_gae, ppo_loss as ppo_loss
from ._registry import make_model as make_model, model_class as model_class, MODELS as MODELS
from ._rollout import (
    Actor as Actor,
    evaluate_policy as evaluate_policy,
    rollout as rollout,
    RolloutState as RolloutState,
    start_rollout as start_rollout,
    Trajectory as Trajectory,
)
from ._run import (
    DivergenceError as DivergenceError,
    fit as fit,
    FitResult as FitResult,
    resume as resume,
)
from ._run_dir import RunDir as RunDir
from ._train_state import (
    load_train_state as load_train_state,
    save_train_state as save_train_state,
    shard_train_state as shard_train_state,
    stack as stack,
    TrainState as TrainState,
    unstack as unstack,
)
from ._version import __version__ as __version__
