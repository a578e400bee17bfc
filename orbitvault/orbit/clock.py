"""Clocks: wall time in production, simulated time in tests and demos (design §3 "Time").

Everything that schedules takes a `Clock` instead of calling `time` directly, so a simulated day of
contact windows runs in milliseconds and deterministically.

Time is float POSIX seconds, UTC (see `timeutil`): contact windows are absolute UTC instants, so
clocks tell wall time rather than `time.monotonic()`. Semantics callers can rely on:

- `now()` never decreases on a `SimulatedClock`. On a `WallClock` it follows the host clock, which
  NTP keeps close to UTC and may step; that is "monotonic enough" for windows minutes long, and
  `sleep_until` re-reads the clock in short naps so a step is followed within `max_nap` seconds.
- `sleep_until(t)` returns once `now() >= t` (immediately if `t` is already past); it may return
  late, never early. Callers must tolerate `now()` being somewhat beyond `t` on return.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from orbitvault.errors import InvalidArgument, OrbitVaultError
from orbitvault.orbit.timeutil import Timestamp


class Clock(ABC):
    """What scheduling code may ask of time."""

    @abstractmethod
    def now(self) -> Timestamp:
        """Current time, POSIX seconds UTC."""

    @abstractmethod
    def sleep_until(self, t: Timestamp) -> None:
        """Block until `now() >= t`; return at once if `t` has passed."""

    def sleep(self, seconds: float) -> None:
        """Block for `seconds` of this clock's time."""
        self.sleep_until(self.now() + seconds)


class WallClock(Clock):
    """The host's UTC clock (`time.time()`), for production."""

    def __init__(self, max_nap: float = 30.0) -> None:
        if max_nap <= 0:
            raise InvalidArgument("max_nap must be positive")
        self.max_nap = max_nap

    def now(self) -> Timestamp:
        return time.time()

    def sleep_until(self, t: Timestamp) -> None:
        # Nap in bounded pieces and re-read the clock so a stepped host clock is followed.
        while (remaining := t - time.time()) > 0:
            time.sleep(min(remaining, self.max_nap))


class SettleTimeout(OrbitVaultError, TimeoutError):
    """A thread woken by `SimulatedClock.advance_to` neither slept again nor finished in time."""


@dataclass(order=True)
class _Event:
    time: Timestamp
    seq: int
    thread: threading.Thread | None = field(default=None, compare=False)
    callback: Callable[[], object] | None = field(default=None, compare=False)
    cancelled: bool = field(default=False, compare=False)
    woken: bool = field(default=False, compare=False)
    settled: bool = field(default=False, compare=False)


class TimerHandle:
    """Returned by `SimulatedClock.call_at`; `cancel()` drops the callback if it has not run."""

    def __init__(self, clock: SimulatedClock, event: _Event) -> None:
        self._clock = clock
        self._event = event

    @property
    def when(self) -> Timestamp:
        return self._event.time

    def cancel(self) -> None:
        with self._clock._lock:
            self._event.cancelled = True


class SimulatedClock(Clock):
    """Discrete-event time: it moves only when a driver calls `advance_to`/`advance`/`step`.

    Threads block in `sleep_until(t)`; the driver moves time forward and wakes them strictly in
    order of their deadlines (ties in the order they went to sleep). Each woken thread is given
    control alone: time does not move on until it has *settled*, that is slept again on this clock,
    called `release()`, or ended. So a loop "work, then sleep until the next window" sees every
    instant in order, exactly as with a wall clock, while nothing sleeps for real. Callbacks
    registered with `call_at` run in the driver's thread at their time, in the same order.

    Use one driver at a time (a test, the demo's main loop). A thread woken by the driver must not
    drive itself, and a thread that after waking goes to block on something else than this clock
    (a queue, a lock held by the driver) must call `release()` first, or the driver waits for it
    until `settle_timeout` real seconds and raises `SettleTimeout`. Threads not started through
    `threading` (e.g. a C library's) always count as alive, so they need `release()` too. A thread
    ending is noticed by polling (a few ms), the only real waiting there is.
    """

    def __init__(self, start: Timestamp = 0.0, *, settle_timeout: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._now = float(start)
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._unsettled: dict[threading.Thread, _Event] = {}
        self._sleepers = 0
        self._driver_lock = threading.Lock()
        self._driver: threading.Thread | None = None
        self.settle_timeout = settle_timeout

    # --- the Clock interface ---------------------------------------------------------------------

    def now(self) -> Timestamp:
        with self._lock:
            return self._now

    def sleep_until(self, t: Timestamp) -> None:
        me = threading.current_thread()
        with self._lock:
            if t <= self._now:
                return
            if me is self._driver:
                raise InvalidArgument("the thread driving a SimulatedClock cannot sleep on it: call advance_to instead")
            self._settle(me)  # blocking again hands control back to the driver
            ev = _Event(float(t), next(self._seq), thread=me)
            heapq.heappush(self._heap, ev)
            self._sleepers += 1
            self._cond.notify_all()
            try:
                while not ev.woken:
                    self._cond.wait()
            finally:
                self._sleepers -= 1

    # --- driving time ----------------------------------------------------------------------------

    def advance_to(self, t: Timestamp) -> None:
        """Move time to `t`, running every sleeper and callback due by then in time order."""
        me = threading.current_thread()
        with self._lock:
            if me in self._unsettled:
                raise InvalidArgument("a thread woken by advance_to cannot drive the clock itself")
            if me is self._driver:
                raise InvalidArgument("advance_to called from a callback of advance_to: schedule instead")
            if t < self._now:
                raise InvalidArgument(f"cannot move a simulated clock back from {self._now} to {t}")
        with self._driver_lock:
            self._driver = me
            try:
                self._run_until(float(t))
            finally:
                self._driver = None

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (see `advance_to`)."""
        if seconds < 0:
            raise InvalidArgument("cannot advance a simulated clock by a negative amount")
        self.advance_to(self.now() + seconds)

    def step(self, until: Timestamp | None = None) -> Timestamp | None:
        """Jump to the next pending event (if at or before `until`) and run it; None when idle.

        This is "time jumps from event to event": `while clock.step(end) is not None: ...`.
        """
        nxt = self.next_event_time()
        if nxt is None or (until is not None and nxt > until):
            return None
        self.advance_to(max(nxt, self.now()))
        return self.now()

    def call_at(self, t: Timestamp, callback: Callable[[], object]) -> TimerHandle:
        """Run `callback` in the driver's thread when time reaches `t` (now, if `t` is past)."""
        with self._lock:
            ev = _Event(max(float(t), self._now), next(self._seq), callback=callback)
            heapq.heappush(self._heap, ev)
            self._cond.notify_all()
            return TimerHandle(self, ev)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> TimerHandle:
        return self.call_at(self.now() + seconds, callback)

    def release(self) -> None:
        """Tell the driver this (woken) thread is done with the current instant."""
        with self._lock:
            self._settle(threading.current_thread())

    # --- inspection, for tests and drivers -------------------------------------------------------

    def next_event_time(self) -> Timestamp | None:
        """Time of the earliest pending sleeper or callback, or None."""
        with self._lock:
            self._drop_cancelled()
            return self._heap[0].time if self._heap else None

    @property
    def sleepers(self) -> int:
        """Threads currently blocked in `sleep_until`."""
        with self._lock:
            return self._sleepers

    def wait_for_sleepers(self, count: int, timeout: float = 10.0) -> bool:
        """Block (on a condition, not a sleep) until `count` threads are asleep on this clock.

        Lets a test start worker threads and know they are parked before it moves time.
        """
        with self._lock:
            return self._cond.wait_for(lambda: self._sleepers >= count, timeout)

    # --- internals -------------------------------------------------------------------------------

    def _settle(self, thread: threading.Thread) -> None:
        ev = self._unsettled.pop(thread, None)
        if ev is not None:
            ev.settled = True
            self._cond.notify_all()

    def _drop_cancelled(self) -> None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)

    def _run_until(self, t: Timestamp) -> None:
        while True:
            with self._lock:
                self._drop_cancelled()
                if not self._heap or self._heap[0].time > t:
                    self._now = max(self._now, t)
                    self._cond.notify_all()
                    return
                ev = heapq.heappop(self._heap)
                self._now = max(self._now, ev.time)
                if ev.callback is None:
                    assert ev.thread is not None
                    ev.woken = True
                    self._unsettled[ev.thread] = ev
                    self._cond.notify_all()
            if ev.callback is not None:
                ev.callback()
            else:
                self._wait_settled(ev)

    def _wait_settled(self, ev: _Event) -> None:
        assert ev.thread is not None
        deadline = time.monotonic() + self.settle_timeout
        nap = 0.001
        with self._lock:
            while not ev.settled:
                if not ev.thread.is_alive():
                    if self._unsettled.get(ev.thread) is ev:
                        del self._unsettled[ev.thread]
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._unsettled.pop(ev.thread, None)
                    raise SettleTimeout(
                        f"thread {ev.thread.name!r} woken at t={ev.time} neither slept again nor "
                        f"ended within {self.settle_timeout}s; call clock.release() before blocking "
                        "on anything else"
                    )
                # Woken at once when the thread sleeps again; the timeout only notices its end.
                self._cond.wait(min(nap, remaining))
                nap = min(nap * 2, 0.05)
