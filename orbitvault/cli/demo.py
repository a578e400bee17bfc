"""`orbitvault demo`: placeholder replaced below once the erasure layer lands."""

from __future__ import annotations

import click


@click.command()
def demo() -> None:
    """Run the end-to-end demonstration."""
    raise click.ClickException("not yet built")
