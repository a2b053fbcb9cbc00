"""The image server's OpenAPI 3.1 description, served by it at ``GET /openapi.json`` (and by
``serve`` on its port, beside the gateway's ``/api/openapi.json``).

Written by hand next to the routes (``app.py``), as the gateway's is. Every error is IMGAPI's
``{"code", "message"}``; ``tests/unit/test_openapi.py`` checks that every route is described with
the answers it can give and that the document is valid OpenAPI 3.1.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_MANIFEST = {"$ref": "#/components/schemas/Manifest"}
_HEALTH = {"$ref": "#/components/schemas/Health"}
_OCTETS = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    return {**answer, "headers": headers} if headers else answer


def _error(code: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ERROR, f"{code}: {description}", headers)


def _header(description: str, schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_RETRY_AFTER = _header("Seconds to wait before trying again", {"type": "integer", "minimum": 1})
_CONNECTION_CLOSE = _header("The server closes the connection after this answer", {"type": "string", "const": "close"})
#: Answered to any operation before (or instead of) its handler: the edge (imagesvc/edge.py) and
#: the app's last line of defence.
_EVERYWHERE = {
    "408": _error("RequestTimeout", "request headers or body not received in time (IMAGESVC_HEADER_TIMEOUT, "
                                    "IMAGESVC_BODY_TIMEOUT)", {"Connection": _CONNECTION_CLOSE}),
    "431": _error("RequestHeaderFieldsTooLarge", "request headers are larger than IMAGESVC_MAX_HEADER_BYTES",
                  {"Connection": _CONNECTION_CLOSE}),
    "500": _error("InternalError", "the store failed to answer, e.g. a stored manifest that is not JSON (details "
                                   "go to the log)"),
    "503": _error("ServiceUnavailable", "too many connections, or the image store cannot answer now (unreachable, "
                                        "throttling, server errors)", {"Retry-After": _RETRY_AFTER}),
}
_NOT_FOUND = _error("ResourceNotFound", "no such image in the store (or not a canonical lower-case uuid)")

_UUID = {"name": "uuid", "in": "path", "required": True,
         "description": "The image's uuid, canonical and lower-case",
         "schema": {"type": "string", "format": "uuid",
                    "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}}
_LAST_MODIFIED = _header("When the file was last written (the value If-Range takes)", {"type": "string"})
_ACCEPT_RANGES = _header("Single byte ranges are served", {"type": "string", "const": "bytes"})
_CONTENT_LENGTH = _header("Bytes in this answer (of the file, for a HEAD)", {"type": "integer", "minimum": 0})
_CONTENT_MD5 = _header("Base64 of the whole file's MD5 (RFC 1864). Whole-file answers only; a HEAD sends it "
                       "only once it is known (it is computed for files up to 64 MiB)",
                       {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}, required=False)
_FILE_PARAMETERS = [
    _UUID,
    {"name": "Range", "in": "header", "required": False,
     "description": "One byte range: bytes=<first>-[<last>] or bytes=-<suffix length> (GET only). A range "
                    "this server does not parse, or several ranges, get the whole file (200)",
     "schema": {"type": "string", "examples": ["bytes=0-1048575", "bytes=1048576-", "bytes=-512"]}},
    {"name": "If-Range", "in": "header", "required": False,
     "description": "The Last-Modified of the copy the client has: the Range applies only if the file is "
                    "still that version, else the whole file is sent",
     "schema": {"type": "string"}},
]
_WHOLE_FILE = {"Content-Length": _CONTENT_LENGTH, "Content-MD5": _CONTENT_MD5, "Last-Modified": _LAST_MODIFIED,
               "Accept-Ranges": _ACCEPT_RANGES}


def _operation(operation_id: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, **more, "responses": {**responses, **{
        code: answer for code, answer in _EVERYWHERE.items() if code not in responses}}}


def document() -> dict[str, Any]:
    """The description: a new dict each call."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagesvc image server",
            "version": "1.0.0",
            "description": "The image store, read-only, as an IMGAPI image server serves it to compute nodes "
                           "and other installations (imagesvc image-server). No credentials. Errors are "
                           "{\"code\", \"message\"}; what the server refuses before any operation is reached "
                           "(a request that is not valid HTTP: 400 BadRequest, a method a path does not take: "
                           "405 BadMethod) has that shape too. The image API itself is the gateway's "
                           "(/api/openapi.json).",
        },
        "servers": [{"url": "/"}],
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["code", "message"],
                      "properties": {"code": {"type": "string", "description": "IMGAPI's error code, e.g. "
                                                                               "ResourceNotFound"},
                                     "message": {"type": "string"}}},
            "Manifest": {
                "description": "An image's manifest as stored (docs/manifest.md): IMGAPI's fields",
                "type": "object",
                "required": ["uuid"],
                "properties": {
                    "uuid": {"type": "string", "format": "uuid"}, "name": {"type": "string"},
                    "version": {"type": "string"}, "type": {"type": "string"}, "os": {"type": "string"},
                    "files": {"type": "array", "items": {"type": "object", "properties": {
                        "sha1": {"type": "string"}, "sha256": {"type": "string"}, "size": {"type": "integer"},
                        "compression": {"type": "string"}}}},
                },
            },
            "Health": {"type": "object", "required": ["status"],
                       "properties": {"status": {"type": "string", "enum": ["alive", "ready", "not ready"]},
                                      "checks": {"type": "object", "additionalProperties": {
                                          "type": "string", "enum": ["ok", "failing"]}}}},
        }},
        "paths": {
            "/ping": {"get": _operation("ping", "Whether the store can be used", {
                "200": _json({"type": "object", "required": ["ping"], "properties": {"ping": {"const": "pong"}}},
                             "pong"),
                "503": _error("ServiceUnavailable", "Image store is not available; or too many connections "
                                                    "(with Retry-After)",
                              {"Retry-After": {**_RETRY_AFTER, "required": False}}),
            })},
            "/healthz": {"get": _operation("alive", "Liveness: the process answers", {"200": _json(_HEALTH, "alive")})},
            "/readyz": {"get": _operation("ready", "Readiness: the store passes its check", {
                "200": _json(_HEALTH, "ready"),
                "503": _json({"anyOf": [_HEALTH, _ERROR]}, "not ready (which check fails; the reason goes to the "
                                                           "log); or ServiceUnavailable: too many connections "
                                                           "(with Retry-After)",
                             {"Retry-After": {**_RETRY_AFTER, "required": False}}),
            })},
            "/images": {"get": _operation("image_list", "The manifests of every image in the store", {
                "200": _json({"type": "array", "items": _MANIFEST}, "Manifests (an unreadable one is left out)"),
            })},
            "/images/{uuid}": {"parameters": [_UUID], "get": _operation("image_show", "One image's manifest", {
                "200": _json(_MANIFEST, "The manifest"), "404": _NOT_FOUND,
            })},
            "/images/{uuid}/file": {
                "get": _operation("image_file", "The image's file, whole or one byte range", {
                    "200": {"description": "The whole file", "headers": _WHOLE_FILE, "content": _OCTETS},
                    "206": {"description": "The range asked for", "content": _OCTETS, "headers": {
                        "Content-Range": _header("bytes <first>-<last>/<size>", {
                            "type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"}),
                        "Content-Length": _CONTENT_LENGTH, "Last-Modified": _LAST_MODIFIED,
                        "Accept-Ranges": _ACCEPT_RANGES}},
                    "302": {"description": "With IMAGESVC_IMAGE_SERVER_REDIRECT=presigned (an S3 store): the file "
                                           "is at Location, a presigned URL of the object store valid for a short "
                                           "while (Range requests go there too)",
                            "headers": {"Location": _header("The presigned URL", {"type": "string"})}},
                    "404": _NOT_FOUND,
                    "416": _error("RequestedRangeNotSatisfiable", "the range starts past the end of the file", {
                        "Content-Range": _header("bytes */<size>", {"type": "string", "pattern": "^bytes \\*/[0-9]+$"}),
                        "Last-Modified": _LAST_MODIFIED, "Accept-Ranges": _ACCEPT_RANGES}),
                    "503": _error("ServiceUnavailable", "too many connections, the image store cannot answer now, "
                                  "or the file was replaced between every look and its opening",
                                  {"Retry-After": _RETRY_AFTER}),
                }, parameters=_FILE_PARAMETERS),
                "head": _operation("image_file_head", "The file's headers (a Range is ignored)", {
                    "200": {"description": "The whole file's headers, no body", "headers": _WHOLE_FILE},
                    "404": {"description": "ResourceNotFound (no body)"},
                }, parameters=_FILE_PARAMETERS[:1]),
            },
        },
    }
