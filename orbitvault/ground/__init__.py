"""orbitvault.ground."""
