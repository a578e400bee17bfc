"""orbitvault.orbit."""
