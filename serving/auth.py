"""Optional bearer-token authentication (RFC 6750 §2.1) for every path of the service, as ASGI middleware.

:class:`BearerAuthMiddleware` runs before any route (BentoML's and the mounted FastAPI apps') reads the body:
when a token is configured, every path except :data:`PUBLIC_PATHS` (probes, the Prometheus scrape and the
OpenAPI document) needs ``Authorization: Bearer <token>`` — default deny, so a route added later (by us or by
BentoML) is never open by accident; the comparison is constant-time (:func:`hmac.compare_digest` on the UTF-8
bytes). Anything else is a 401 problem with ``WWW-Authenticate: Bearer``. The FastAPI routes declare the same
check as a dependency (:func:`serving.http.require_token`), which also documents the scheme in ``/docs.json``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

from serving import problems

__all__ = ["PUBLIC_PATHS", "BearerAuthMiddleware", "token_matches"]

#: The only paths served without authentication (probes, Prometheus scrapes, the OpenAPI document).
PUBLIC_PATHS: frozenset[str] = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/docs.json"})

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
