"""Two checks that run before any route: the request body's size and the API key.

Both are plain ASGI middleware, so they see every request (also ones for unknown routes) and answer with
the same OpenAI-style JSON errors as the handlers. The body is read here, at most `max_body` bytes of it,
and replayed to the app; a client announcing or sending more is answered 413 before the JSON parser sees it.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_response


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"the request body is larger than this server's limit of {self.max_body} bytes "
                           "(bitdistill serve --max-body-bytes)", code="request_too_large")  # fmt: skip
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            if not length.isdigit():
                too_big = APIError(400, "the Content-Length header is not a number", code="invalid_header")
            return await error_response(too_big)(scope, receive, send)
        body, more = bytearray(), True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.max_body:
                return await error_response(too_big)(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect notice handlers wait for

        await self.app(scope, replay, send)


class ApiKey:
    """`Authorization: Bearer KEY` on every /v1 route; /health and /metrics stay open for probes."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                msg = ("missing API key: send 'Authorization: Bearer KEY'" if not auth
                       else "incorrect API key provided")  # fmt: skip
                err = APIError(401, msg, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await error_response(err)(scope, receive, send)
        await self.app(scope, receive, send)
