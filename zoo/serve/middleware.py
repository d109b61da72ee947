"""ASGI middleware around the app: the request body limit, one JSON access-log line per request, metrics.

Pure ASGI (no BaseHTTPMiddleware) so that bodies stream through untouched and a
slow client costs a suspended coroutine, not a thread.
"""

from __future__ import annotations

import json
import logging
import time
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

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes_in"] += len(message.get("body", b""))
                if seen["bytes_in"] > self.limit:  # no Content-Length (chunked): count as it arrives
                    raise BodyTooLarge(self.limit)
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


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
