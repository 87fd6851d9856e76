"""Stopping on a signal: SIGTERM, SIGINT or SIGUSR1 ask the trainer to finish the current optimizer step, write a
checkpoint and exit with `EXIT_RESUMABLE`, the code that says "stopped by a signal, resume me".

SLURM sends SIGTERM before it kills a job (or the signal `--signal` names, some seconds ahead), spot instances
send SIGTERM, and Ctrl-C is SIGINT. The handler only records the signal, so a second one (or any number) while the
checkpoint is written changes nothing; SIGKILL remains the way to stop at once (resume is exact after it too, from
the last checkpoint). Under DDP every rank learns of a signal received by any rank at the end of the same step.
"""

from __future__ import annotations

import signal
import threading
from typing import Optional

__all__ = ["StopSignals", "EXIT_RESUMABLE", "STOP_SIGNALS"]

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry" — a job script requeues on it
EXIT_RESUMABLE = 75
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None)) if s is not None)


class StopSignals:
    """`with StopSignals() as stop:` — `stop.received` is the name of the first stop signal ("SIGTERM"), or None;
    `stop.count` how many arrived. Outside the main thread (where handlers cannot be installed) it never fires."""

    def __init__(self, signals: tuple = STOP_SIGNALS):
        self.signals = signals
        self.received: Optional[str] = None
        self.count = 0
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
