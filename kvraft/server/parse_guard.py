"""Requests that do not parse, on both ports: answered INVALID_ARGUMENT, counted, and
logged at a bounded rate (issue 14, "Bad input").

grpc.aio parses a request with its method handler's `request_deserializer` before any
servicer code runs; a DecodeError there escapes to grpc, which answers UNKNOWN and logs
an ERROR with a full traceback — one per request, so anyone who can reach a port could
flood the node's log. `ParseGuard`, a server interceptor installed first on each
server, rewrites every method handler (kvraft's, etcd's, the peer service's, health's
and reflection's alike) so that:

* its deserializer returns an `Unparsed` marker instead of raising;
* its behaviour answers a marker with INVALID_ARGUMENT "request does not parse:
  METHOD" before the handler (or any inner interceptor, such as the access check)
  sees it — for a stream, at the message that does not parse;
* a method its servicer leaves to the generated base class (which raises
  NotImplementedError, another traceback per call) is answered UNIMPLEMENTED
  "method not implemented: METHOD";
* each refusal increments `kvraft_malformed_requests_total{port,method}`, and
  `BoundedLog` writes at most one WARNING line per `MALFORMED_LOG_INTERVAL_S`, with
  how many were refused since the previous line.

grpc-go (and so etcd) answers an unparsable request INTERNAL "grpc: error
unmarshalling request"; kvraft answers INVALID_ARGUMENT, the code for a request the
client got wrong (docs/etcd.md, "Requests that do not parse").
"""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from .log_rate import LogGate
from .metrics import NodeMetrics

log = logging.getLogger("kvraft.server.parse_guard")

# At most one log line per this many seconds for requests that do not parse, per port;
# the metric counts every one.
MALFORMED_LOG_INTERVAL_S = 10.0
# The longest decoder message a log line quotes (protobuf's are one short sentence).
ERROR_TEXT_MAX = 200

Deserializer = Callable[[bytes], Any]
if TYPE_CHECKING:   # grpc's classes are generic to the type checker only
    Handler = grpc.RpcMethodHandler[Any, Any]


class Unparsed:
    """What a guarded deserializer returns for bytes that are not a request message:
    never a protobuf message, so it cannot be mistaken for a request."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error   # the decoder's message (not the exception: no frames kept)


class BoundedLog:
    """One WARNING line per `interval_s` at most; the events in between are counted and
    reported by the next line (log_rate.LogGate): each of them refused, never logged
    on its own."""

    def __init__(self, what: str, interval_s: float = MALFORMED_LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert interval_s > 0
        self.what = what
        self.gate = LogGate(interval_s, clock)

    @property
    def suppressed(self) -> int:
        """The events refused since the last line written."""
        return self.gate.suppressed

    def event(self, detail: str) -> bool:
        """Record one event; True when it wrote a line."""
        refused = self.gate.admit()
        if refused is None:
            return False
        earlier = f" ({refused} more since the last report)" if refused else ""
        log.warning("%s: %s%s; further ones are counted in "
                    "kvraft_malformed_requests_total and reported at most every %gs",
                    self.what, detail.replace("\n", " "), earlier, self.gate.interval_s)
        return True


def _guarded(deserialize: Deserializer) -> Deserializer:
    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:  # DecodeError, or any other: these bytes are no request
            return Unparsed((str(e) or type(e).__name__)[:ERROR_TEXT_MAX])

    return parse


class ParseGuard(grpc.aio.ServerInterceptor):
    """Install FIRST in a server's interceptors, so no inner interceptor or servicer
    sees an `Unparsed` marker. `port` labels the metric ("client", "peer").

    It runs on every call, so it keeps its per-call work small: the guarded
    deserializers are made once per deserializer, and a method whose handler is the
    same object as last time (no interceptor inside this one makes handlers per call)
    gets the same wrapped handler again. Invariant: both dicts are keyed by what the
    server serves (a method with a handler, that handler's deserializer), so they
    stay as small as the services however many different names clients send."""

    def __init__(self, port: str, metrics: NodeMetrics, what: str,
                 interval_s: float = MALFORMED_LOG_INTERVAL_S) -> None:
        self.port = port
        self.counter = metrics.malformed_requests
        self.log = BoundedLog(f"{what}: requests that do not parse on the {port} port",
                              interval_s)
        self._parsers: dict[Deserializer, Deserializer] = {}
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method -> (inner, wrapped)

    async def refuse(self, method: str, unparsed: Unparsed,
                     context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Count and (rate-bounded) log it, then abort the call: raises."""
        self.counter.labels(self.port, method).inc()
        self.log.event(f"{method} from {context.peer()}: {unparsed.error}")
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"request does not parse: {method}")

    def parser(self, deserialize: Deserializer) -> Deserializer:
        parse = self._parsers.get(deserialize)
        if parse is None:
            parse = self._parsers[deserialize] = _guarded(deserialize)
        return parse

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
            details: grpc.HandlerCallDetails) -> Handler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method, self)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


async def _unimplemented(method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    # A method the servicer inherits from the generated base class (which sets
    # UNIMPLEMENTED and raises NotImplementedError): answered without grpc's traceback.
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"method not implemented: {method}")


def _is_async_generator(function: Any) -> bool:
    code = getattr(function, "__code__", None)   # functions and bound methods
    if code is None:
        return inspect.isasyncgenfunction(function)
    return bool(code.co_flags & inspect.CO_ASYNC_GENERATOR)


_FACTORIES: dict[tuple[bool, bool], Callable[..., Any]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _wrap(handler: Handler, method: str, guard: ParseGuard) -> Handler:
    assert handler.request_deserializer is not None   # (intercept_service checked)
    parse = guard.parser(handler.request_deserializer)
    streaming = handler.request_streaming
    if not streaming and not handler.response_streaming:
        # The common case, kept to one coroutine: every unary call passes here.
        unary: Any = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> Any:
            if type(request) is Unparsed:
                await guard.refuse(method, request, context)
            try:
                return await unary(request, context)
            except NotImplementedError:
                await _unimplemented(method, context)

        return _rebuilt(handler, parse, unary_unary=unary_unary)

    behavior: Any = handler.unary_stream or handler.stream_unary or handler.stream_stream

    async def requests(iterator: AsyncIterator[Any],
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        # Each message of a request stream is checked as the handler reads it (the
        # handlers here iterate their requests, none calls context.read()).
        async for request in iterator:
            if type(request) is Unparsed:
                await guard.refuse(method, request, context)
            yield request

    async def argument(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if streaming:
            return requests(request, context)
        if type(request) is Unparsed:
            await guard.refuse(method, request, context)
        return request

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        given = await argument(request, context)
        try:
            return await behavior(given, context)
        except NotImplementedError:
            await _unimplemented(method, context)

    async def generate(request: Any, context: grpc.aio.ServicerContext[Any, Any]
                       ) -> AsyncIterator[Any]:
        async for response in behavior(await argument(request, context), context):
            yield response

    # A handler that yields its responses is wrapped by one that yields them; any other
    # by a coroutine (grpc.aio tells them apart by their functions' kinds).
    wrapped = generate if _is_async_generator(behavior) else call
    kind = ("unary_stream" if not streaming else
            "stream_stream" if handler.response_streaming else "stream_unary")
    return _rebuilt(handler, parse, **{kind: wrapped})


def _rebuilt(handler: Handler, parse: Deserializer, **behavior: Any) -> Handler:
    """`handler` with the guarded deserializer and the wrapped behaviour. grpc's own
    handlers are namedtuples, copied with one call; any other is made anew."""
    replace = getattr(handler, "_replace", None)
    if replace is not None:
        return replace(request_deserializer=parse, **behavior)
    ((_, function),) = behavior.items()
    return _FACTORIES[(handler.request_streaming, handler.response_streaming)](
        function, request_deserializer=parse,
        response_serializer=handler.response_serializer)
