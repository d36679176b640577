"""Bearer-token access control for every route but the health probes, the playground
page's static files (and, if chosen, /metrics); the gRPC front checks the same token
(service/oip/grpc/servicer.py)."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import GenserveError
from .errors import problem_for
from .playground import is_public

# Orchestrators probe these without credentials.
PROBES = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})


class UnauthorizedError(GenserveError):
    """No token, or the wrong one."""

    status = 401
    type = "unauthorized"
    title = "Unauthorized"


def token_matches(sent: str | None, token: str) -> bool:
    """Constant-time comparison of an `Authorization` value with `Bearer <token>`."""
    if sent is None:
        return False
    scheme, _, value = sent.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class AuthMiddleware:
    """401 with `WWW-Authenticate: Bearer` for a request without the server's token."""

    def __init__(self, app: ASGIApp, token: str, metrics_public: bool) -> None:
        self.app = app
        self.token = token
        self.open = PROBES | ({"/metrics"} if metrics_public else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        sent = None
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                sent = value.decode("latin-1")
                break
        if not token_matches(sent, self.token):
            error = UnauthorizedError(
                "this server needs a token: send Authorization: Bearer <token>"
                if sent is None
                else "the token is not valid for this server"
            )
            response = problem_for(error, scope["path"])
            response.headers["WWW-Authenticate"] = 'Bearer realm="genserve"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
