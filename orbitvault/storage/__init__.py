"""orbitvault.storage."""
