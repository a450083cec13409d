"""OpenAI-style error responses: every failure is JSON `{"error": {"message", "type", "param", "code"}}`.

Clients written for OpenAI's API (the official SDKs among them) read `error.message` and raise by status, so
the same shape is used for every 4xx and 5xx here, including the ones FastAPI and Starlette produce
themselves (validation errors, unknown routes, wrong methods).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BitDistillError

INVALID = "invalid_request_error"


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = INVALID, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def error_body(message: str, type: str = INVALID, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(err.message, err.type, err.param, err.code), err.status, headers=err.headers
    )


# pydantic error types -> OpenAI-ish codes; the message names the field and what was wrong with it
_CODES = {"extra_forbidden": "unknown_parameter", "missing": "missing_required_parameter",
          "json_invalid": "invalid_json"}  # fmt: skip


_TYPE_TAGS = {"str", "int", "float", "bool", "none"}  # pydantic names union members in `loc`; no field is one


def validation_error(exc: RequestValidationError) -> APIError:
    first = exc.errors()[0]
    kind = first.get("type", "")
    loc = [
        str(p) for p in first.get("loc", ()) if p != "body" and str(p) not in _TYPE_TAGS and "[" not in str(p)
    ]
    if kind == "json_invalid":
        loc = []  # pydantic puts the character offset there, not a field
    param = ".".join(loc) or None
    if kind == "json_invalid":
        ctx = first.get("ctx") or {}
        msg = f"the request body is not valid JSON ({ctx.get('error', 'parse error')})"
    elif kind == "extra_forbidden":
        msg = f"unknown parameter {param!r}; this server does not accept it (see docs/serving.md)"
    elif kind == "missing" and not loc:
        msg = "the request body is missing: send a JSON object"
    elif kind == "missing":
        msg = f"missing required parameter {param!r}"
    elif kind in ("model_attributes_type", "dict_type") and not loc:
        msg = "the request body must be a JSON object (send Content-Type: application/json)"
    else:
        msg = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    return APIError(400, msg, param=param, code=_CODES.get(kind, "invalid_value"))


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(BitDistillError)
    async def _user(_: Request, exc: BitDistillError) -> JSONResponse:
        return error_response(APIError(400, str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        err = APIError(exc.status_code, str(exc.detail), code=codes.get(exc.status_code))
        err.headers = getattr(exc, "headers", None)
        return error_response(err)

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        # a bug, not bad input: the client still gets JSON (and the traceback goes to the server log)
        return error_response(APIError(500, f"internal error: {type(exc).__name__}", type="server_error"))
