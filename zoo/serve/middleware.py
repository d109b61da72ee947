"""ASGI middleware around the app: the request body limit, Content-Encoding, one JSON access-log line, metrics.

Pure ASGI (no BaseHTTPMiddleware) so that bodies stream through and a slow client
costs a suspended coroutine, not a thread. A gzip or deflate body is inflated here
as it arrives, so every route (tensors, JSON texts, multipart uploads) reads the
plain body; any other Content-Encoding is refused when a route reads the body.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zoo.serve.errors import RequestError
from zoo.serve.metrics import ServerMetrics

access_log = logging.getLogger("zoo.serve.access")


class BodyTooLarge(RequestError):
    def __init__(self, limit: int, given: int | None = None):
        size = f"{given} bytes" if given is not None else "more"
        super().__init__(f"request body of {size} is over this server's limit of {limit} bytes; send smaller "
                         "batches, or start the server with a larger --max-body-mb", status=413)


class BodyDecoder:
    """Undoes a request's Content-Encoding chunk by chunk, never inflating past ``limit`` bytes."""

    def __init__(self, encoding: str, limit: int):
        self.encoding = encoding.strip().lower() or "identity"
        self.limit, self.size = limit, 0
        wbits = _WBITS.get(self.encoding)
        self.inflater = zlib.decompressobj(wbits=wbits) if wbits is not None else None

    def __call__(self, chunk: bytes, last: bool) -> bytes:
        if self.encoding == "identity":
            return chunk
        if self.inflater is None:
            raise RequestError(f"Content-Encoding '{self.encoding}' is not supported; send identity, gzip or "
                               "deflate", status=415)
        try:
            # bounded: a small bomb must not become a huge buffer
            plain = self.inflater.decompress(chunk, self.limit - self.size + 1)
        except zlib.error as exc:
            raise RequestError(f"the {self.encoding} body cannot be inflated ({exc})") from None
        self.size += len(plain)
        if self.size > self.limit:
            raise RequestError(f"the inflated body is over this server's limit of {self.limit} bytes; send "
                               "smaller batches, or start the server with a larger --max-body-mb", status=413)
        if self.inflater.unused_data:
            raise RequestError(f"the {self.encoding} body goes on after its compressed stream ends (several "
                               "streams one after another?); compress the body as one stream")
        if last and not self.inflater.eof:
            raise RequestError(f"the {self.encoding} body is cut short (its compressed stream does not end); "
                               "send the whole body")
        return plain


# zlib's window bits per HTTP content coding: gzip has a gzip header, deflate is RFC 1950's zlib format
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class ServeMiddleware:
    """Refuses bodies over ``max_body_bytes``, logs every request as JSON, counts it in the metrics."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics, max_body_bytes: int):
        self.app, self.metrics, self.limit = app, metrics, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"status": 500, "bytes_out": 0, "bytes_in": 0}
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            seen["status"] = 413
            await _send_error(send, 413, str(BodyTooLarge(self.limit, declared)))
            self._record(scope, seen, start)
            return

        decode = BodyDecoder(_header(scope, b"content-encoding") or "identity", self.limit)

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen["bytes_in"] += len(body)
                if seen["bytes_in"] > self.limit:  # no Content-Length (chunked): count as it arrives
                    raise BodyTooLarge(self.limit)
                message = {**message, "body": decode(body, last=not message.get("more_body", False))}
            return message

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, observed_send)
        finally:
            self._record(scope, seen, start)

    def _record(self, scope: Scope, seen: dict[str, int], start: float) -> None:
        seconds = time.perf_counter() - start
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        model = str((scope.get("path_params") or {}).get("name", ""))
        self.metrics.observe_request(endpoint, model, seen["status"], seconds)
        client = scope.get("client")
        access_log.info(json.dumps({
            "ts": round(time.time(), 3), "method": scope.get("method"), "path": scope.get("path"),
            "status": seen["status"], "ms": round(seconds * 1000, 2), "model": model or None,
            "bytes_in": seen["bytes_in"], "bytes_out": seen["bytes_out"],
            "client": f"{client[0]}:{client[1]}" if client else None,
        }, separators=(",", ":")))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _content_length(scope: Scope) -> int | None:
    try:
        return int(_header(scope, b"content-length") or "")
    except ValueError:
        return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
