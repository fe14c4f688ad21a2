"""Trainer, run configs, checkpoints: the loop every rule shares."""

from .checkpoint import CheckpointError, NoCheckpointError, latest_checkpoint, load_checkpoint, load_weights, save_checkpoint
from .config import DEFAULT_CONFIG, OptimConfig, RunConfig, ScheduleConfig, TrainConfig, apply_overrides, load_config
from .trainer import Trainer, environment, evaluate, evaluate_checkpoint, resolve_device

__all__ = [
    "CheckpointError",
    "NoCheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "DEFAULT_CONFIG",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "load_config",
    "Trainer",
    "environment",
    "evaluate",
    "evaluate_checkpoint",
    "resolve_device",
]
