"""orbitvault: off-planet disaster-recovery storage."""

__version__ = "0.1.0"
