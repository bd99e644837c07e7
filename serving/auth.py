"""Optional bearer-token authentication (RFC 6750 §2.1) and the request size limit, as ASGI middleware.

Both run before any route reads the body:

* :class:`BearerAuthMiddleware` — when a token is configured, every path except the health, metrics and
  OpenAPI paths needs ``Authorization: Bearer <token>``; the comparison is constant-time
  (:func:`hmac.compare_digest` on the UTF-8 bytes). Anything else is a 401 problem with
  ``WWW-Authenticate: Bearer``.
* :class:`RequestSizeLimitMiddleware` — a declared ``Content-Length`` above the limit is refused with 413
  before a byte of the body is read; chunked bodies are counted while they stream and refused as soon as they
  pass the limit, so a client can never make the service buffer more than ``max_request_bytes``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from serving import problems

__all__ = [
    "PUBLIC_PATHS",
    "BearerAuthMiddleware",
    "BodyTooLargeError",
    "RequestSizeLimitMiddleware",
    "token_matches",
]

#: Paths served without authentication (probes, Prometheus scrapes, API description).
PUBLIC_PATHS: frozenset[str] = frozenset(
    {"/healthz", "/livez", "/readyz", "/metrics", "/docs.json", "/schema.json", "/v1/healthz"}
)

Scope = dict[str, Any]


def token_matches(header_value: str | None, token: str) -> bool:
    """``True`` when ``header_value`` is ``Bearer <token>`` (scheme case-insensitive; constant-time)."""
    if not header_value:
        return False
    scheme, _, credentials = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _send_problem(send: Any, problem: problems.Problem) -> None:
    response = problem.to_response()
    await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> dict[str, Any]:  # pragma: no cover - responses never read
    return {"type": "http.disconnect"}


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <token>`` on every HTTP path outside ``public_paths``."""

    def __init__(
        self, app: Any, token: str | None = None, public_paths: Iterable[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self.token = token
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or not self.token
            or scope.get("path", "") in self.public_paths
            or scope.get("method") == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        if not token_matches(_header(scope, b"authorization"), self.token):
            await _send_problem(send, problems.unauthorized())
            return
        await self.app(scope, receive, send)


class BodyTooLargeError(Exception):
    """Raised from ``receive`` when a streamed body passes the limit; routes turn it into a 413 problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds {limit} bytes")
        self.limit = limit


class RequestSizeLimitMiddleware:
    """Refuse HTTP request bodies larger than ``max_bytes`` with a 413 problem, without buffering them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_problem(send, problems.invalid_parameter("Content-Length is not an integer."))
                return
            if length > self.max_bytes:
                await _send_problem(send, problems.request_too_large(self.max_bytes))
                return
        received = 0
        started = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await _send_problem(send, problems.request_too_large(self.max_bytes))
