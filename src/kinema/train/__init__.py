"""Training: the loop (`train`), the EMA of the weights, the run lock, stopping on a signal, what to resume from, and
progressive distillation (`distill`), which is training with another target. Checkpoint folders live in
`kinema.checkpoint`."""

from .distill import distill, distill_config
from .ema import EMA
from .lock import RunLock, RunLocked
from .signals import EXIT_RESUMABLE, StopSignals
from .trainer import TrainingError, TrainResult, learning_rate, train

__all__ = ["train", "distill", "distill_config", "learning_rate", "TrainingError", "TrainResult", "EMA", "RunLock",
           "RunLocked", "StopSignals", "EXIT_RESUMABLE"]
