"""Errors of the backup client, each a subclass of the project hierarchy (`orbitvault.errors`).

They exist as separate classes because the CLI maps them to restic's exit codes: 10 no repository,
11 locked, 12 wrong password. Everything else raised on purpose is an `OrbitVaultError` (exit 1).
"""

from __future__ import annotations

from orbitvault.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, Unauthenticated


class RepositoryNotFound(NotFound):
    """No repository (no `config` object) at the given location."""


class WrongPassword(Unauthenticated):
    """No key file of the repository opens with the password given."""


class RepositoryLocked(FailedPrecondition):
    """Another process holds a lock that conflicts with the one asked for."""


class CorruptObject(DataLoss):
    """An object or blob failed authentication, its hash, or its format checks."""


class InvalidFormat(InvalidArgument):
    """A structure read from the repository (tree, snapshot, index) is malformed."""
