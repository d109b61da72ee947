"""Request errors in the protocol's format: a 4xx status and the body ``{"error": "..."}``.

The Open Inference Protocol answers every failed request with one JSON object
holding a single ``error`` string (kserve's required_api.md, "JSON Error
Object"); tritonclient raises ``InferenceServerException`` with that string. Every
handler here turns what went wrong into that shape, and nothing into a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from zoo.errors import ConfigError, InputError, ZooError

log = logging.getLogger("zoo.serve")


class RequestError(InputError):
    """A request the server refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


class ModelNotFound(RequestError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"no model named '{name}' is served here; served: {', '.join(known) or 'none'} "
                         "(GET /v2/models/NAME for one model's inputs and outputs)", status=404)


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception raised while answering: the client's fault is 4xx."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, (InputError, ConfigError)):
        return 400  # the runtime's own checks (dtype, shape, undecodable input) name the client's mistake
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """``{"error": message}``; an unexpected exception is logged with its traceback, the client sees one line."""
    if isinstance(exc, ZooError):
        return {"error": str(exc)}
    log.exception("unexpected error while answering a request", exc_info=exc)
    return {"error": f"internal error ({type(exc).__name__}); the server log has the details"}
