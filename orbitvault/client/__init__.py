"""orbitvault.client."""
