"""What every long-running orbitvault process does with signals.

SIGTERM or SIGINT asks for a graceful stop (the server's own grace period applies); a second one
exits at once, for an operator who does not want to wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def stop_on_signal(log: logging.Logger) -> Iterator[threading.Event]:
    """An event set by the first SIGTERM/SIGINT; the previous handlers come back on exit."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now signal=%s", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        log.info("signal received signal=%s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
