"""The OpenAPI 3 document served at ``/openapi.json`` (schemathesis checks the server against it)."""

from __future__ import annotations

from app.settings import Settings

ERROR = {"$ref": "#/components/schemas/Error"}


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": ERROR}}}


def _ok(desc: str, schema: dict | None = None) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def openapi(settings: Settings) -> dict:
    secured = [{"bearer": []}] if settings.api_token is not None else []
    common = {"400": _err("Malformed request"), "503": _err("A dependency is unavailable; retry later")}
    write = {"401": _err("Missing or wrong bearer token")} if secured else {}
    image_id = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "imgstream", "version": "1", "description": "Stream-processing image classification."},
        "paths": {
            "/upload": {"post": {
                "summary": "Upload an image (JPEG, PNG or WebP); answered 202 once stored and queued.",
                "security": secured,
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/webp": {"schema": {"type": "string", "format": "binary"}},
                }},
                "responses": {"202": _ok("Accepted", {"$ref": "#/components/schemas/Accepted"}), **common, **write,
                              "413": _err("Body or pixel count above the limit"),
                              "415": _err("Unsupported content type"), "422": _err("Not a decodable image")},
            }},
            "/predictions": {"get": {
                "summary": "Recent images with their predictions, newest first.",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                                  "maximum": 10_000_000}},
                ],
                "responses": {"200": _ok("A page of images", {"$ref": "#/components/schemas/Page"}), **common},
            }},
            "/predictions/{image_id}": {"get": {
                "summary": "Status, three predictions and consensus for one image.",
                "parameters": [image_id,
                               {"name": "trace", "in": "query", "schema": {"type": "string"}},
                               {"name": "model_version", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _ok("The image", {"$ref": "#/components/schemas/Image"}), **common,
                              "404": _err("Unknown image id")},
            }},
            "/extract": {"post": {
                "summary": "Descriptors of a stored image, by image id or object key.",
                "security": secured,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"image_id": {"type": "string"}, "object_key": {"type": "string"}}}}}},
                "responses": {"200": _ok("Descriptors"), **common, **write, "404": _err("Unknown image"),
                              "422": _err("Neither image_id nor a valid object_key")},
            }},
            "/predict/{classifier}": {"post": {
                "summary": "Classify k descriptors with one classifier.",
                "security": secured,
                "parameters": [{"name": "classifier", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["descriptors"],
                    "properties": {"descriptors": {"type": "array", "items": {"type": "number"}}}}}}},
                "responses": {"200": _ok("A prediction"), **common, **write,
                              "422": _err("Unknown classifier, wrong length or non-finite descriptors")},
            }},
            "/health": {"get": {"summary": "Kafka, PostgreSQL, S3 and the model bundle, each checked.",
                                "responses": {"200": _ok("All healthy"), "503": _ok("Something is down")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Accepted": {"type": "object", "required": ["image_id", "object_key", "sha256", "status", "links"],
                             "properties": {"image_id": {"type": "string", "format": "uuid"},
                                            "object_key": {"type": "string"}, "sha256": {"type": "string"},
                                            "size": {"type": "integer"}, "content_type": {"type": "string"},
                                            "status": {"type": "string"}, "links": {"type": "object"}}},
                "Image": {"type": "object", "required": ["image_id", "status", "predictions", "consensus"],
                          "properties": {"image_id": {"type": "string"},
                                         "status": {"type": "string", "enum": ["pending", "complete", "failed"]},
                                         "predictions": {"type": "object"}, "consensus": {"type": "object"},
                                         "trace": {"type": "array", "items": {"type": "object"}}}},
                "Page": {"type": "object", "required": ["items", "limit", "offset"],
                         "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
                                        "limit": {"type": "integer"}, "offset": {"type": "integer"},
                                        "next": {"type": "string", "nullable": True}}},
            },
        },
    }
