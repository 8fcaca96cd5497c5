"""Routes, request parsing and the one place where errors become ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec
import aiohttp
import aiohttp.http_exceptions
from aiohttp import web

from app.http.contracts import ExtractRequest, FeedbackRequest, PredictRequest
from app.http.dataplane import DataPlane
from app.core.errors import (BadRequest, Forbidden, ImgstreamError, NotFound, PayloadTooLarge, ServiceUnavailable,
                        Unauthorized, Unprocessable, UnsupportedMediaType)
from app.core.metrics import REFUSED
from app.core.security import Access
from app.core.settings import Settings
from app.http.openapi import ROUTES, SCOPES, openapi

log = logging.getLogger("imgstream.http")
STATIC = Path(__file__).parent / "static"
DATAPLANE = web.AppKey("dataplane", DataPlane)
SETTINGS = web.AppKey("settings", Settings)
ACCESS = web.AppKey("access", Access)
IMAGE_TYPES = {"image/jpeg", "image/png", "image/webp"}


def _json(data, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json",
                        headers=headers)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ImgstreamError as exc:
        REFUSED.labels(_route_name(request), exc.code).inc()
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ServiceUnavailable) else \
            {"WWW-Authenticate": 'Bearer realm="imgstream"'} if isinstance(exc, Unauthorized) else None
        return _json(exc.to_dict(), exc.status, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "http_error")
        REFUSED.labels(_route_name(request), code).inc()
        return _json({"error": {"code": code, "message": exc.reason}}, exc.status)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        REFUSED.labels(_route_name(request), "internal_error").inc()
        return _json({"error": {"code": "internal_error", "message": "internal error"}}, 500)


@web.middleware
async def wait_ready(request: web.Request, handler):
    """Faust may start serving HTTP before this worker's resources are up: wait a little, then 503."""
    ready = request.app[DATAPLANE].rt.ready
    if not ready.is_set() and request.path not in ("/live", "/ready", "/health", "/metrics"):
        try:
            await asyncio.wait_for(ready.wait(), 10)
        except asyncio.TimeoutError:
            raise ServiceUnavailable("the worker is starting", code="starting", retry_after=2) from None
    return await handler(request)


@web.middleware
async def authorize(request: web.Request, handler):
    """Every route's scope comes from the route table (app/http/openapi.py), /metrics included:
    a route added there cannot be left unguarded, and a route mounted any other way is not served.
    An unknown path falls through to the router's 404."""
    resource = request.match_info.route.resource
    if resource is None:  # no such path or method: the router's own 404 / 405
        return await handler(request)
    scope = SCOPES.get(("GET" if request.method == "HEAD" else request.method, resource.canonical))
    if scope is None:
        raise NotFound(f"{request.path} is not a route of this API", code="not_found")
    access = request.app[ACCESS]
    given = request.headers.get("Authorization")
    if not access.allows(scope, given):
        if scope == "write" and given and access.allows("read", given):
            raise Forbidden("this token may only read; this endpoint needs a write token", code="insufficient_scope")
        what = "a metrics token" if scope == "metrics" else f"a {scope} token"
        raise Unauthorized(f"this endpoint needs `Authorization: Bearer <token>` with {what}"
                           + (" (the token given is not valid here)" if given else ""))
    return await handler(request)


async def _read_stream(content, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit + (1 << 16):
        raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes", code="body_too_large")
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "file":
                    chunks, size = [], 0
                    while chunk := await part.read_chunk(1 << 16):
                        size += len(chunk)
                        if size > limit:
                            raise PayloadTooLarge(f"file is larger than the limit of {limit} bytes",
                                                  code="body_too_large")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except (ValueError, AssertionError, LookupError, UnicodeError, aiohttp.ClientPayloadError,
                aiohttp.http_exceptions.HttpProcessingError) as exc:  # aiohttp's multipart parser on broken input
            raise BadRequest(f"malformed multipart body: {exc}", code="malformed_multipart") from exc
        raise BadRequest("multipart upload needs a part named 'file'", code="missing_file")
    if ctype in IMAGE_TYPES or ctype == "application/octet-stream":
        return await _read_stream(request.content, limit)
    raise UnsupportedMediaType(f"send multipart/form-data with a 'file' part, or a raw body of type "
                               f"{', '.join(sorted(IMAGE_TYPES))} (got {ctype or 'none'})")


async def _json_body(request: web.Request) -> dict:
    raw = await _read_stream(request.content, 1 << 20)
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="malformed_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("the JSON body must be an object", code="malformed_json")
    return body


async def _json_request(request: web.Request, contract: type, code: str):
    """The body as ``contract`` (app/http/contracts.py): 400 unless it is a JSON object, 422 with
    ``code`` when the object does not fit the contract."""
    body = await _json_body(request)
    try:
        return msgspec.convert(body, contract)
    except msgspec.ValidationError as exc:
        raise Unprocessable(f"invalid request: {exc}", code=code) from exc


# --- handlers ----------------------------------------------------------------------------------
async def upload(request: web.Request) -> web.Response:
    body = await _upload_body(request, request.app[SETTINGS].max_upload_bytes)
    result = await request.app[DATAPLANE].upload(body)
    return _json(result, 202, {"Location": result.links.prediction})


async def prediction(request: web.Request) -> web.Response:
    trace = request.query.get("trace", "0").lower() in ("1", "true", "yes")
    version = request.query.get("model_version") or None
    return _json(await request.app[DATAPLANE].prediction(request.match_info["image_id"], trace, version))


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", code="invalid_parameter") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}", code="invalid_parameter")
    return value


async def predictions(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 20, 1, 200)
    offset = _int_param(request, "offset", 0, 0, 10_000_000)
    return _json(await request.app[DATAPLANE].recent(limit, offset))


async def extract(request: web.Request) -> web.Response:
    return _json(await request.app[DATAPLANE].extract(await _json_request(request, ExtractRequest, "invalid_request")))


async def predict(request: web.Request) -> web.Response:
    req = await _json_request(request, PredictRequest, "invalid_descriptors")
    return _json(await request.app[DATAPLANE].predict(request.match_info["classifier"], req))


async def live(request: web.Request) -> web.Response:
    return _json(await request.app[DATAPLANE].live())


async def health(request: web.Request) -> web.Response:
    """Readiness: served at /ready and at /health."""
    ok, body = await request.app[DATAPLANE].health()
    return _json(body, 200 if ok else 503)


async def feedback(request: web.Request) -> web.Response:
    req = await _json_request(request, FeedbackRequest, "invalid_feedback")
    return _json(await request.app[DATAPLANE].feedback(request.match_info["image_id"], req))


def _window(request: web.Request) -> int:
    return _int_param(request, "window_s", int(request.app[SETTINGS].accuracy_window_s), 60, 30 * 86400)


async def accuracy(request: web.Request) -> web.Response:
    return _json(await request.app[DATAPLANE].accuracy(_window(request)))


async def experiments(request: web.Request) -> web.Response:
    return _json(await request.app[DATAPLANE].experiments(_window(request)))


async def drift(request: web.Request) -> web.Response:
    return _json(request.app[DATAPLANE].drift())


async def timeseries(request: web.Request) -> web.Response:
    return _json(await request.app[DATAPLANE].timeseries(_window(request), _int_param(request, "step_s", 60, 5, 3600)))


async def openapi_json(request: web.Request) -> web.Response:
    return _json(openapi(request.app[SETTINGS]))


async def stats(request: web.Request) -> web.Response:
    return _json(await request.app[DATAPLANE].stats())


async def dashboard(request: web.Request) -> web.Response:
    return web.FileResponse(STATIC / "dashboard.html")


async def image(request: web.Request) -> web.Response:
    """The stored image bytes, or ``?view=model`` the picture the model saw (dashboard thumbnails)."""
    data, content_type = await request.app[DATAPLANE].image(request.match_info["image_id"],
                                                            request.query.get("view", "stored"))
    return web.Response(body=data, content_type=content_type, headers={"Cache-Control": "max-age=86400"})


def setup(app: web.Application, dataplane: DataPlane, settings: Settings) -> None:
    app[DATAPLANE] = dataplane
    app[SETTINGS] = settings
    app[ACCESS] = Access.from_settings(settings)
    app.middlewares.append(errors)
    app.middlewares.append(authorize)
    app.middlewares.append(wait_ready)
    handlers = globals()
    for route in ROUTES:  # the documented routes, and only them (app/http/openapi.py)
        add = app.router.add_get if route.method == "get" else app.router.add_post
        add(route.path, handlers[route.handler])
