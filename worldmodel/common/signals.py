"""Ctrl-C and SIGTERM for the training loops: finish the current step, save a resumable state, stop.

The one handler of both ``train`` and ``train-tokenizer``: the first signal only raises a flag that
the loop reads between two steps, so the state it then saves resumes exactly where the run left off;
a second signal aborts at once (:class:`KeyboardInterrupt`), for a user who will not wait for the save.
Signals can only be caught in the main thread; elsewhere the loop runs without handlers.
"""

from __future__ import annotations

import os
import signal
import threading
from types import TracebackType
from typing import Any


class StopSignals:
    """While installed (``with StopSignals() as stop:``), SIGINT / SIGTERM set ``stop.requested`` and
    ``stop.signum``; a second one raises :class:`KeyboardInterrupt`. The loop may set ``requested``
    itself (a time limit), after which a signal aborts at once too."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def resume_hint(what: str, signum: int, step: int, out: str | os.PathLike) -> str:
    """The message of a run stopped by a signal: where it stopped and how to resume it."""
    return f"{what} stopped by signal {signum} at step {step}; run again with out={out} to resume"
