"""Training: the loop, EMA, checkpoints."""

from .checkpoint import latest_checkpoint, list_checkpoints, load_state, resolve_checkpoint, save_checkpoint
from .ema import EMA
from .trainer import TrainingError, TrainResult, learning_rate, resolve_precision, train

__all__ = ["train", "learning_rate", "TrainingError", "TrainResult", "resolve_precision", "EMA", "save_checkpoint",
           "latest_checkpoint", "list_checkpoints", "load_state", "resolve_checkpoint"]
