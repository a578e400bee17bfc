"""Malformed requests are the client's fault: INVALID_ARGUMENT, never INTERNAL.

gRPC Python answers bytes that do not parse as the method's request message with INTERNAL
("Exception deserializing request!") before any servicer code runs, which tells a client the
server is broken and hides the real cause. `MalformedRequestInterceptor` (installed on the node and
gateway servers) gives every method a deserializer that never raises: a message that does not
parse becomes a marker, which the wrapped behaviour turns into INVALID_ARGUMENT naming the message
type (and, in a stream, the message's position). For client streams the check happens as the
servicer reads the stream, so a put whose third message is garbage fails there and stores nothing,
exactly like any other broken stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from orbitvault.errors import InvalidArgument


class Malformed:
    """Stands for a request message that did not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and anything a parser may raise on hostile bytes
            return Malformed(type(exc).__name__)

    return parse


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    if isinstance(name := getattr(deserializer, "full_name", None), str):  # wire.py's deserializers
        return name
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


def _checked(requests: Iterator[Any], what: str) -> Iterator[Any]:
    for i, msg in enumerate(requests, start=1):
        if isinstance(msg, Malformed):
            raise InvalidArgument(f"message {i} of the stream is not a valid {what} ({msg.reason})")
        yield msg


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """See the module docstring."""

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        what = _type_name(handler.request_deserializer)
        parse = _tolerant(handler.request_deserializer)

        def refuse(request: Any, context: grpc.ServicerContext) -> None:
            if isinstance(request, Malformed):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {what} ({request.reason})")

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                refuse(request, context)
                return inner_uu(request, context)

            return handler._replace(request_deserializer=parse, unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
                refuse(request, context)
                return inner_us(request, context)

            return handler._replace(request_deserializer=parse, unary_stream=unary_stream)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return inner_su(_checked(requests, what), context)

            return handler._replace(request_deserializer=parse, stream_unary=stream_unary)
        inner_ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return inner_ss(_checked(requests, what), context)

        return handler._replace(request_deserializer=parse, stream_stream=stream_stream)
