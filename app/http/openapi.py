"""The OpenAPI 3.1 document served at ``/openapi.json``, generated from the route table below and
the typed contracts of ``app/http/contracts.py`` (msgspec writes their JSON Schemas). ``api.setup``
mounts exactly these routes (a test keeps the two equal) and schemathesis checks the running
server against the document."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from app.http import contracts as c
from app.core.security import Access, Scope
from app.core.settings import Settings
from models.domain import CLASSIFIERS


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: str  # name of the function in app.http.api
    summary: str
    ok: tuple[int, str, type | None, str] = (200, "OK", None, "application/json")  # status, text, contract, media
    request: type | None = None  # JSON body contract
    errors: dict[int, str] = field(default_factory=dict)
    params: tuple[dict, ...] = ()
    # who may call it once tokens are configured (app/core/security.Access): "public" (the probes and the
    # dashboard's static page, which holds no data), "read", "write" (a write token also reads),
    # "metrics" (/metrics, with its own tokens). Default: GET reads, POST writes.
    scope: Scope | None = None

    def __post_init__(self) -> None:
        if self.scope is None:
            object.__setattr__(self, "scope", "read" if self.method == "get" else "write")


def _path(name: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


IMAGE_ID = _path("image_id")
WINDOW = _query("window_s", {"type": "integer", "minimum": 60, "maximum": 30 * 86400})
ROUTES = (
    Route("post", "/upload", "upload", "Upload an image (JPEG, PNG or WebP); answered 202 once stored and queued.",
          ok=(202, "Accepted: stored in S3 and queued in Kafka", c.Accepted, "application/json"),
          errors={413: "Body or pixel count above the limit", 415: "Unsupported content type",
                  422: "Not a decodable image"}),
    Route("get", "/predictions", "predictions", "Recent images with their predictions, newest first.",
          ok=(200, "A page of images", c.Page, "application/json"),
          params=(_query("limit", {"type": "integer", "minimum": 1, "maximum": 200}),
                  _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000}))),
    Route("get", "/predictions/{image_id}", "prediction", "Status, three predictions and consensus for one image.",
          ok=(200, "The image", c.Image, "application/json"), errors={404: "Unknown image id"},
          params=(IMAGE_ID, _query("trace", {"type": "string"}), _query("model_version", {"type": "string"}))),
    Route("get", "/images/{image_id}", "image",
          "The stored image's bytes, or with view=model the backbone's input crop as PNG (what the model saw: "
          "orientation, bit depth and transparency applied; the dashboard's thumbnails).",
          ok=(200, "The image", None, "image/*"), errors={400: "Unknown view", 404: "Unknown image id"},
          params=(IMAGE_ID, _query("view", {"type": "string", "enum": ["stored", "model"]}))),
    Route("post", "/extract", "extract", "Descriptors of a stored image, by image id or object key.",
          ok=(200, "Descriptors", c.Descriptors, "application/json"), request=c.ExtractRequest,
          errors={404: "Unknown image", 422: "Neither image_id nor a valid object_key"}),
    Route("post", "/predict/{classifier}", "predict", "Classify k descriptors with one classifier.",
          ok=(200, "A prediction", c.PredictResult, "application/json"), request=c.PredictRequest,
          errors={422: "Unknown classifier, wrong length or non-finite descriptors"},
          params=(_path("classifier", {"type": "string", "examples": list(CLASSIFIERS)}),)),
    Route("get", "/live", "live", "Liveness: the process and its event loop answer (nothing outside the "
          "process is asked, so an outage of Kafka, PostgreSQL or S3 never gets a worker restarted).",
          ok=(200, "Alive", c.Liveness, "application/json"), scope="public"),
    Route("get", "/ready", "health", "Readiness: Kafka, PostgreSQL, S3 and the model bundle, each checked.",
          ok=(200, "Ready", c.Health, "application/json"), errors={503: "Something is down"}, scope="public"),
    Route("get", "/health", "health", "The same checks as /ready (kept for Docker health checks and scripts).",
          ok=(200, "All healthy", c.Health, "application/json"), errors={503: "Something is down"},
          scope="public"),
    Route("get", "/stats", "stats", "Per-classifier throughput and latency, agreement and consumer lag.",
          ok=(200, "Live figures", c.Stats, "application/json")),
    Route("post", "/feedback/{image_id}", "feedback", "Send an image's true label (one of the serving bundle's "
          "classes); idempotent, the last label sent wins. Feeds the live accuracy.",
          ok=(200, "The label stored", c.Feedback, "application/json"), request=c.FeedbackRequest,
          errors={400: "Malformed image id or body", 404: "Unknown image id", 422: "Not one of the bundle's classes"},
          params=(IMAGE_ID,)),
    Route("get", "/accuracy", "accuracy", "Live accuracy per bundle and classifier over the labels received "
          "within the window.", ok=(200, "Live accuracy", c.LiveAccuracy, "application/json"),
          params=(WINDOW,)),
    Route("get", "/experiments", "experiments", "The serving bundle and its shadows side by side: predictions, "
          "agreement with the serving bundle, live and held-out accuracy.",
          ok=(200, "Experiments", c.Experiments, "application/json"), params=(WINDOW,)),
    Route("get", "/drift", "drift", "Drift of the recent serving descriptors against the bundle's training data "
          "(population stability index per descriptor; this worker's extractor).",
          ok=(200, "Drift", c.Drift, "application/json")),
    Route("get", "/timeseries", "timeseries", "The dashboard's charts over time.",
          ok=(200, "Series", c.Timeseries, "application/json"),
          params=(WINDOW, _query("step_s", {"type": "integer", "minimum": 5, "maximum": 3600}))),
    Route("get", "/openapi.json", "openapi_json", "This document.", ok=(200, "OpenAPI 3.1", None, "application/json")),
    Route("get", "/dashboard", "dashboard", "The live dashboard: a static page that holds no data; it asks for a "
          "token when the worker needs one and sends it as a header with every call.",
          ok=(200, "HTML", None, "text/html"), scope="public"),
)
# Served by Faust's Prometheus sensor, not by app.http.api.
EXTERNAL = (Route("get", "/metrics", "", "Prometheus metrics.", ok=(200, "Prometheus text format", None, "text/plain"),
                  scope="metrics"),)
# (method, path) -> scope, for the access middleware (app.http.api.authorize)
SCOPES: dict[tuple[str, str], Scope] = {(r.method.upper(), r.path): r.scope for r in ROUTES + EXTERNAL}

_HEALTH_DOWN = {"/health": c.Health, "/ready": c.Health}  # its 503 answers with the same document as its 200


def _schema(contract: type | None, media: str) -> dict:
    if contract is not None:
        return {"$ref": f"#/components/schemas/{contract.__name__}"}
    return {"type": "object"} if media == "application/json" else {"type": "string"}


def _guarded(route: Route, access: Access) -> bool:
    if route.scope == "metrics":
        return bool(access.metrics)
    return route.scope != "public" and access.enabled


def openapi(settings: Settings) -> dict:
    access = Access.from_settings(settings)
    routes = ROUTES + EXTERNAL
    types = [c.Error] + [t for r in routes for t in (r.ok[2], r.request) if t is not None]
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    paths: dict = {}
    for r in routes:
        status, text, contract, media = r.ok
        responses = {str(status): {"description": text, "content": {media: {"schema": _schema(contract, media)}}}}
        refusals = {400: "Malformed request", 503: "A dependency is unavailable or the worker is starting; retry",
                    **r.errors}
        if _guarded(r, access):
            refusals[401] = "Missing or wrong bearer token"
            if r.scope == "write" and access.read:
                refusals[403] = "A read token on a route that writes"
        for code, why in sorted(refusals.items()):
            body = error if r.path not in _HEALTH_DOWN or code != 503 else {
                "content": {"application/json": {"schema": _schema(_HEALTH_DOWN[r.path], "application/json")}}}
            responses[str(code)] = {**body, "description": why}
        op = {"operationId": r.handler or r.path.strip("/"), "summary": r.summary, "responses": responses}
        if r.params:
            op["parameters"] = list(r.params)
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _schema(r.request,
                                                                                                     "application/json")}}}
        if r.path == "/upload":
            binary = {"type": "string", "format": "binary"}
            op["requestBody"] = {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                   "properties": {"file": binary}}},
                **{t: {"schema": binary} for t in ("image/jpeg", "image/png", "image/webp")}}}
        # the scheme per route: what a client must send here, given this worker's settings
        op["security"] = [{"bearer": [r.scope]}] if _guarded(r, access) else []
        paths.setdefault(r.path, {})[r.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "imgstream", "version": "1", "description": "Stream-processing image classification."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
