"""Training: the loop (`train`) and the EMA of the weights. Checkpoint folders live in `kinema.checkpoint`."""

from .ema import EMA
from .trainer import TrainingError, TrainResult, learning_rate, train

__all__ = ["train", "learning_rate", "TrainingError", "TrainResult", "EMA"]
