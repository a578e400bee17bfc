"""How every operator command turns an error into one line and an exit code, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from orbitvault.errors import OrbitVaultError


@contextmanager
def cli_errors() -> Iterator[None]:
    """Our errors as their message; OS errors (unreadable file, full disk) naming the file."""
    try:
        yield
    except OrbitVaultError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise click.ClickException(f"{e.strerror or e}{where}") from None
