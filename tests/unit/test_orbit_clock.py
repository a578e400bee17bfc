"""Clocks: simulated time wakes sleepers in deadline order and never sleeps for real."""

from __future__ import annotations

import random
import threading
import time

import pytest

from orbitvault.errors import InvalidArgument
from orbitvault.orbit.clock import Clock, SettleTimeout, SimulatedClock, WallClock


@pytest.fixture
def no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(_seconds: float) -> None:
        raise AssertionError("time.sleep called under a simulated clock")

    monkeypatch.setattr(time, "sleep", forbidden)


def _start(target: object, *args: object) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


def test_sleepers_wake_in_deadline_order_at_their_deadline(no_real_sleep: None) -> None:
    clock = SimulatedClock(1000.0)
    woke: list[tuple[float, float]] = []
    lock = threading.Lock()
    deadlines = [1000.0 + d for d in random.Random(7).sample(range(1, 500), 20)]

    def sleeper(deadline: float) -> None:
        clock.sleep_until(deadline)
        with lock:
            woke.append((deadline, clock.now()))

    threads = [_start(sleeper, d) for d in deadlines]
    assert clock.wait_for_sleepers(len(deadlines))
    began = time.perf_counter()
    clock.advance_to(2000.0)
    for t in threads:
        t.join(5)
    assert [d for d, _ in woke] == sorted(deadlines)
    assert all(now == d for d, now in woke)  # each saw the clock at its own deadline
    assert clock.now() == 2000.0
    assert time.perf_counter() - began < 2.0


def test_looping_workers_interleave_in_time_order(no_real_sleep: None) -> None:
    """Workers that sleep again after waking see every instant in order, as with wall time."""
    clock = SimulatedClock(0.0)
    seen: list[tuple[float, str]] = []

    def worker(name: str, period: float, count: int) -> None:
        for _ in range(count):
            clock.sleep(period)
            seen.append((clock.now(), name))

    threads = [_start(worker, "a", 7.0, 30), _start(worker, "b", 11.0, 20)]
    assert clock.wait_for_sleepers(2)
    began = time.perf_counter()
    clock.advance_to(1000.0)
    for t in threads:
        t.join(5)
    times = [t for t, _ in seen]
    assert times == sorted(times)  # globally in time order
    assert [t for t, n in seen if n == "a"] == [7.0 * i for i in range(1, 31)]
    assert [t for t, n in seen if n == "b"] == [11.0 * i for i in range(1, 21)]
    # A tie (t = 77) goes to whoever went to sleep first: b slept at 66, a at 70.
    assert seen.index((77.0, "b")) < seen.index((77.0, "a"))
    assert time.perf_counter() - began < 2.0


def test_a_simulated_day_of_ten_minute_passes_takes_no_real_time(no_real_sleep: None) -> None:
    clock = SimulatedClock(0.0)
    passes: list[float] = []

    def scheduler() -> None:
        while clock.now() < 86400.0:
            clock.sleep(600.0)  # a ten-minute pass
            passes.append(clock.now())

    t = _start(scheduler)
    assert clock.wait_for_sleepers(1)
    began = time.perf_counter()
    clock.advance_to(86400.0)
    t.join(5)
    assert len(passes) == 144
    assert time.perf_counter() - began < 2.0


def test_callbacks_run_in_time_order_and_can_be_cancelled() -> None:
    clock = SimulatedClock(0.0)
    ran: list[tuple[str, float]] = []
    clock.call_at(30.0, lambda: ran.append(("c", clock.now())))
    clock.call_at(10.0, lambda: ran.append(("a", clock.now())))
    dropped = clock.call_at(20.0, lambda: ran.append(("dropped", clock.now())))
    clock.call_later(10.0, lambda: clock.call_later(5.0, lambda: ran.append(("b", clock.now()))))
    dropped.cancel()
    clock.advance_to(100.0)
    assert ran == [("a", 10.0), ("b", 15.0), ("c", 30.0)]


def test_step_jumps_from_event_to_event() -> None:
    clock = SimulatedClock(0.0)
    for t in (50.0, 5.0, 20.0):
        clock.call_at(t, lambda: None)
    times = []
    while (t := clock.step(until=40.0)) is not None:
        times.append(t)
    assert times == [5.0, 20.0]
    assert clock.next_event_time() == 50.0
    assert clock.now() == 20.0


def test_misuse_is_refused() -> None:
    clock = SimulatedClock(100.0)
    clock.sleep_until(50.0)  # the past: returns at once
    with pytest.raises(InvalidArgument):
        clock.advance_to(99.0)
    with pytest.raises(InvalidArgument):
        clock.advance(-1.0)

    errors: list[Exception] = []

    def driver_sleeps() -> None:
        try:
            clock.sleep(10.0)
        except InvalidArgument as e:
            errors.append(e)

    def nested_drive() -> None:
        try:
            clock.advance_to(200.0)
        except InvalidArgument as e:
            errors.append(e)

    clock.call_at(110.0, driver_sleeps)  # callbacks run in the driver's thread
    clock.call_at(115.0, nested_drive)
    clock.advance_to(120.0)
    assert len(errors) == 2
    assert "driving" in str(errors[0]) and "callback" in str(errors[1])
    assert clock.now() == 120.0


def test_woken_thread_blocking_elsewhere_times_out_unless_it_releases() -> None:
    clock = SimulatedClock(0.0, settle_timeout=0.2)
    gate = threading.Event()

    def stuck() -> None:
        clock.sleep_until(10.0)
        gate.wait(5)  # blocks on something else without releasing the clock

    t = _start(stuck)
    assert clock.wait_for_sleepers(1)
    with pytest.raises(SettleTimeout, match="release"):
        clock.advance_to(20.0)
    gate.set()
    t.join(5)

    gate2 = threading.Event()
    done: list[float] = []

    def polite() -> None:
        clock.sleep_until(30.0)
        done.append(clock.now())
        clock.release()
        gate2.wait(5)

    t2 = _start(polite)
    assert clock.wait_for_sleepers(1)
    clock.advance_to(40.0)
    assert done == [30.0]
    gate2.set()
    t2.join(5)


def test_wall_clock() -> None:
    clock: Clock = WallClock(max_nap=0.02)
    assert abs(clock.now() - time.time()) < 1.0
    clock.sleep_until(clock.now() - 10)  # past: immediate
    began = time.monotonic()
    clock.sleep(0.05)
    assert time.monotonic() - began >= 0.045
    with pytest.raises(InvalidArgument):
        WallClock(max_nap=0)
