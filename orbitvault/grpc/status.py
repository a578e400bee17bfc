"""The one mapping between orbitvault errors and gRPC status codes, both ways.

Server side: servicer methods raise `orbitvault.errors` classes and never call `context.abort`
themselves; `rpc_errors` (a decorator) turns what they raise into a status. An unexpected
exception becomes INTERNAL with a short reference the operator can find in the node's log (with
the traceback); internals never reach the client. Client side: `error_from_rpc` and
`translate_rpc_errors` turn a `grpc.RpcError` back into the matching orbitvault error, so SDK and
peer code handle one exception hierarchy whatever the transport.
"""

from __future__ import annotations

import functools
import inspect
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc

from orbitvault.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OrbitVaultError,
    PermissionDenied,
    ResourceExhausted,
    Status,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("orbitvault.grpc")

# Status -> gRPC code: the Status values are the gRPC code names, so this is total by construction.
CODE_FOR_STATUS: dict[Status, grpc.StatusCode] = {s: grpc.StatusCode[s.value] for s in Status}

# gRPC code -> the error class a client raises. Codes orbitvault servers never send on purpose
# map to the nearest meaning: a deadline or a cancelled call means the peer was not reachable in time.
ERROR_FOR_CODE: dict[grpc.StatusCode, type[OrbitVaultError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.UNIMPLEMENTED: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

# gRPC status details travel in a header; keep them well below header limits.
MAX_DETAILS = 1000

F = TypeVar("F", bound=Callable[..., Any])


def code_for(exc: OrbitVaultError) -> grpc.StatusCode:
    """The gRPC code for an orbitvault error."""
    return CODE_FOR_STATUS.get(exc.status, grpc.StatusCode.INTERNAL)


def _details(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_DETAILS else text[: MAX_DETAILS - 3] + "..."


def abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    """End the call with the status `exc` stands for; always raises (that is how grpc aborts)."""
    if isinstance(exc, OrbitVaultError):
        code = code_for(exc)
        level = logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.INFO
        log.log(level, "rpc failed method=%s code=%s error=%r", method, code.name, _details(exc))
        context.abort(code, _details(exc))
    if isinstance(exc, grpc.RpcError) or not context.is_active():
        # The client cancelled or went away (a broken request stream raises a bare RpcError):
        # nobody is left to tell, and it is not a server fault.
        log.info("rpc cancelled method=%s reason=client-gone", method)
        context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
    ref = secrets.token_hex(4)
    log.error("rpc internal error method=%s ref=%s", method, ref, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in the node (ref {ref}); see the node's log")


def rpc_errors(method: F) -> F:
    """Decorate a servicer method (unary or streaming response) so raised errors become statuses."""
    name = method.__name__
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                abort(context, exc, name)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    def unary_wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort(context, exc, name)

    return unary_wrapper  # type: ignore[return-value]


def error_from_rpc(err: grpc.RpcError) -> OrbitVaultError:
    """The orbitvault error a failed call stands for (client side), keeping the server's message."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = (err.details() if isinstance(err, grpc.Call) else None) or ""
    cls = ERROR_FOR_CODE.get(code) if code is not None else None
    if cls is None:
        name = code.name if code is not None else "UNKNOWN"
        return OrbitVaultError(f"{name}: {details}" if details else f"the call failed with {name}")
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED):
        details = f"{code.name}: {details}" if details else code.name
    return cls(details or code.name)


@contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Within the block, a `grpc.RpcError` is re-raised as the matching orbitvault error."""
    try:
        yield
    except grpc.RpcError as err:
        raise error_from_rpc(err) from err
