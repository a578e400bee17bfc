"""The project's one exception hierarchy.

Domain code raises these; it never imports gRPC. Each class names the status it stands for
(`Status`), so the gRPC adapter, the SDK and the CLI map errors to status codes and exit codes in
one place each. Messages say what is wrong and, where it helps, what to do.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Transport-neutral status names; the values are the gRPC status code names."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    DATA_LOSS = "DATA_LOSS"
    UNAVAILABLE = "UNAVAILABLE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


class OrbitVaultError(Exception):
    """Base of every error orbitvault raises on purpose."""

    status: Status = Status.INTERNAL


class InvalidArgument(OrbitVaultError, ValueError):
    status = Status.INVALID_ARGUMENT


class NotFound(OrbitVaultError, LookupError):
    status = Status.NOT_FOUND


class AlreadyExists(OrbitVaultError):
    status = Status.ALREADY_EXISTS


class DataLoss(OrbitVaultError):
    status = Status.DATA_LOSS


class Unavailable(OrbitVaultError):
    status = Status.UNAVAILABLE


class FailedPrecondition(OrbitVaultError):
    status = Status.FAILED_PRECONDITION


class ResourceExhausted(OrbitVaultError):
    status = Status.RESOURCE_EXHAUSTED


class Unauthenticated(OrbitVaultError):
    status = Status.UNAUTHENTICATED


class PermissionDenied(OrbitVaultError):
    status = Status.PERMISSION_DENIED


# --- erasure layer -------------------------------------------------------------------------------


class GeometryError(InvalidArgument):
    """A k+m geometry, fragment size or stripe size the codec cannot guarantee."""


class FragmentError(InvalidArgument):
    """Fragments handed to the codec are malformed: wrong length, index, or count."""


class TooFewFragments(DataLoss):
    """Fewer than k healthy fragments of a row: the row cannot be reproduced.

    `row` is the row within its stripe; `healthy` the fragment indexes that passed their checksum;
    `damaged` those that were present but failed it.
    """

    def __init__(self, message: str, *, row: int, healthy: list[int], damaged: list[int]) -> None:
        super().__init__(message)
        self.row = row
        self.healthy = healthy
        self.damaged = damaged


class RecordUncorrectable(DataLoss):
    """A protected record has more damage than its Reed-Solomon code can correct."""
