"""orbitvault.orbit: the orbit model that says when each satellite can be reached.

- `clock`: `Clock`, `WallClock` (production), `SimulatedClock` (tests and demos).
- `model`, `config`: satellites (TLEs, SGP4), ground stations, ISL terminals, node numbers, and
  loading them from one TOML file (`load_constellation()` gives the shipped sample).
- `passes`: ground-station passes (AOS/LOS to the second) and inter-satellite link windows.
- `plan`: contact plans, read and written as ION contact plan lines and HDTN JSON.
- `timeline`: an SVG picture of a plan; `tle`, `walker`: TLE generation and the sample.

Time is float POSIX seconds, UTC, throughout (see `timeutil` for why). Domain code: no gRPC.
"""

from orbitvault.orbit.clock import Clock, SimulatedClock, WallClock
from orbitvault.orbit.config import load_constellation
from orbitvault.orbit.model import (
    Constellation,
    GroundStation,
    IslConfig,
    LinkBand,
    NodeMap,
    Satellite,
)
from orbitvault.orbit.passes import IslWindow, Pass, predict_all, predict_isl_windows, predict_passes
from orbitvault.orbit.plan import Contact, ContactPlan, read_plan, write_plan
from orbitvault.orbit.timeline import Transfer, render_timeline

__all__ = [
    "Clock",
    "Constellation",
    "Contact",
    "ContactPlan",
    "GroundStation",
    "IslConfig",
    "IslWindow",
    "LinkBand",
    "NodeMap",
    "Pass",
    "Satellite",
    "SimulatedClock",
    "Transfer",
    "WallClock",
    "load_constellation",
    "predict_all",
    "predict_isl_windows",
    "predict_passes",
    "read_plan",
    "render_timeline",
    "write_plan",
]
