"""orbitvault.erasure."""
