"""The gateway's OpenAPI 3.1 description, served at ``GET /api/openapi.json`` and rendered by the
interactive docs at ``/api/docs/`` (``docs_page.py``).

Written by hand next to the routes (the framework cannot infer the original API's envelopes and
status codes). ``_document`` says what each handler answers; ``document`` then adds what the
layers around the handlers answer, the same for every operation they apply to (the edge's and the
middleware's refusals, authentication, throttling, reading the body, ``Idempotency-Key``).
``tests/unit/test_openapi.py`` checks that it names every route the app serves with the answers
each can give, and that it is a valid OpenAPI 3.1 document. The image server describes itself
(``services/image_server/openapi.py``).
"""

from __future__ import annotations

from typing import Any

from imagesvc.domain import fields

_BOOL = {"oneOf": [{"type": "boolean"}, {"type": "string", "pattern": "^(?i:true|false|1|0)$"},
                   {"type": "integer", "enum": [0, 1]}]}
_SAFE = {"type": "string", "pattern": "^[^<>%$&;'\"]*$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _detail(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer = _json(_ref("Detail"), description)
    return {**answer, "headers": headers} if headers else answer


_RETRY_AFTER = {"description": "Seconds to wait before trying again", "required": True,
                "schema": {"type": "integer", "minimum": 1}}
_CONNECTION_CLOSE = {"description": "The server closes the connection after this answer", "required": True,
                     "schema": {"type": "string", "const": "close"}}
_AUTH_FAILED = _detail("Forbidden: missing or invalid credentials, or no permission")
#: Answered before any handler runs, to any operation (imagesvc/edge.py, the gateway middleware).
_EDGE_AND_MIDDLEWARE = {
    "408": _detail("Request headers or body not received in time (IMAGESVC_HEADER_TIMEOUT, IMAGESVC_BODY_TIMEOUT)",
                   {"Connection": _CONNECTION_CLOSE}),
    "431": _detail("Request headers are larger than IMAGESVC_MAX_HEADER_BYTES", {"Connection": _CONNECTION_CLOSE}),
    "503": _detail("Service temporarily unavailable, try again later: the database or the broker is unreachable, "
                   "the broker did not confirm a command (nothing was done), or the server has too many "
                   "connections", {"Retry-After": _RETRY_AFTER}),
}
_UNAVAILABLE = _EDGE_AND_MIDDLEWARE["503"]
#: Where credentials are needed (auth.py; throttle.py: IMAGESVC_THROTTLE, off by default).
_THROTTLED = _detail("Request was throttled (IMAGESVC_THROTTLE)", {"Retry-After": _RETRY_AFTER})
#: Text fields take a number as its text, as the original's (Django REST framework's CharField).
_USERNAME = {"type": ["string", "number"]}


def _text(max_length: int) -> dict[str, Any]:
    return {"anyOf": [{**_SAFE, "maxLength": max_length}, {"type": "number"}]}


_IMAGE_FIELDS: dict[str, Any] = {
    "alias": _text(32),
    "access": {"oneOf": [{"type": "integer", "enum": list(fields.ACCESS_CHOICES)}, {"type": "string"}]},
    "owner": _USERNAME,
    "desc": _text(128),
    "version": _text(16),
    "resize": _BOOL,
    "deploy": _BOOL,
    "tags": {"oneOf": [{"type": "array", "items": {"type": "string", "pattern": "^[ :/A-Za-z0-9_-]+$"}},
                       {"type": "string"}]},
    "dc_bound": _BOOL,
}
_LIST_PARAMETERS = [
    {"name": "full", "in": "query", "schema": _BOOL},
    {"name": "extended", "in": "query", "schema": _BOOL},
    {"name": "order_by", "in": "query", "schema": {"type": "string"}, "description": "name or created; prefix - for descending"},
]

def _paging(marker: str) -> list[dict[str, Any]]:
    """``limit``/``marker`` of a list (services/gateway/listing.py); ``marker``: what it names."""
    return [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
         "description": "One page of at most this many items (an addition to the original API). Without it "
                        "(and without marker) the answer is the whole list, as the original's. The page has a "
                        "Link header to the next one while more may follow"},
        {"name": "marker", "in": "query", "schema": {"type": "string"},
         "description": f"The page after this item: {marker} of the previous page's last item (Glance's and "
                        "IMGAPI's marker; keyset paging: the items strictly after it in the order asked for). "
                        "One the caller cannot see in this list is refused like an unknown one (400), where it "
                        "is looked up (an image list sorted by name takes any string as its own key; one "
                        "sorted by created looks it up unless marker_created is given). Without limit, a page "
                        "of 1000"},
    ]


#: The image lists' marker key: what their Link carries so that the next page needs no look-up.
_MARKER_CREATED = {
    "name": "marker_created", "in": "query", "schema": {"type": "string", "format": "date-time"},
    "description": "With marker, in a list sorted by created: the marker image's created (ISO 8601), as the "
                   "Link of the previous page gives it. The next page then starts from this key, so the removal "
                   "of the marker image meanwhile breaks nothing. Not a timestamp: 400"}


_IMAGE_FILTERS = [
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["1", "2", "ok", "pending"]},
     "description": "Only images with this status (1/ok, 2/pending; the names in any case)"},
    {"name": "name", "in": "query", "schema": {"type": "string", "maxLength": 64},
     "description": "Only images whose name begins with this, without regard to case (% and _ are plain "
                    "characters)"},
    {"name": "ostype", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 6},
     "description": "Only images of this OS type (1 Linux, 2 SunOS, 3 BSD, 4 Windows, 5 SunOS zone, 6 Linux zone)"},
    {"name": "owner", "in": "query", "schema": {"type": "string", "maxLength": 150},
     "description": "Only images owned by this user (username)"},
    {"name": "tag", "in": "query", "schema": {"type": "array", "items": {
        "type": "string", "pattern": "^[ :/A-Za-z0-9_-]+$", "maxLength": 64}}, "style": "form", "explode": True,
     "description": "Only images with this tag; repeat it for images with every one of the tags"},
    {"name": "attached_to", "in": "query", "schema": {"type": "string", "maxLength": 16},
     "description": "Only images attached to this datacenter"},
    {"name": "dc", "in": "query", "schema": {"type": "string", "maxLength": 16},
     "description": "In a paged request (limit or marker given) only: the same as attached_to. Without them it "
                    "is ignored, as the original ignores its general dc parameter on these lists (es get /image "
                    "-dc X answers the whole list)"},
    {"name": "access", "in": "query", "schema": {"type": "string", "enum": [
        "1", "3", "4", "public", "private", "deleted"]}, "description": "Only images with this access"},
]
_NEXT_LINK = {"Link": {"description": 'With limit, while more may follow: </api/...?...>; rel="next", the next '
                                      "page as a path-absolute reference to resolve against the request's URL "
                                      "(it carries limit, marker, marker_created where sorted by created, "
                                      "order_by, the flags and the filters)",
                       "schema": {"type": "string"}}}
_PAGE_OK = {**_json(_ref("TaskEnvelope"), "SUCCESS: the list, or with limit one page of it"),
            "headers": _NEXT_LINK}
#: An image list without limit is sent as it is read from the database (chunked, no Content-Length).
_STREAMED_PAGE_OK = {**_json(_ref("TaskEnvelope"), "SUCCESS: the list, or with limit one page of it; without limit "
                                                   "the whole list, streamed (chunked)"), "headers": _NEXT_LINK}
_BAD_LIST_QUERY = _json(_ref("TaskEnvelope"),
                        "FAILURE, by field: a flag that is not a boolean (checked first, one at a time), then "
                        'every refused paging or filter value at once, e.g. {"limit": ["Ensure this value is '
                        'less than or equal to 1000."], "marker": ["Unknown marker: it names nothing in this '
                        'list."]}')
_DC = {"name": "dc", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 16}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"}}
#: A request body that is not a JSON object is refused by the parser with ``{"detail": "JSON parse
#: error - ..."}`` (as the original's); field errors come in the task envelope.
_BAD_REQUEST = _json({"anyOf": [_ref("TaskEnvelope"), _ref("Detail")]},
                     "FAILURE: validation errors by field (task envelope), or a body that is not a JSON object "
                     "(detail)")
_BAD_FLAG = _json(_ref("TaskEnvelope"), "FAILURE: a flag that is not a boolean")
_BODY_REFUSED = {"413": _detail("Request body is larger than IMAGESVC_MAX_BODY_BYTES"),
                 "415": _detail("Unsupported media type: a body that is not application/json (or +json)")}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": 'Optional: the ETag of GET /api/image/{name}/ ("v<version>") or *. The change is '
                            "made only if the image still has that version, else 412 Precondition failed "
                            "(an addition to the original API)."}
_TASK_ID_HEADER = {"description": "The task's id", "schema": {"type": "string"}}
_TASK_ANSWERS = {
    "200": {**_json(_ref("TaskEnvelope"), "SUCCESS: the consumer finished within the answer window"),
            "headers": {"es_task_id": _TASK_ID_HEADER}},
    "201": {**_json(_ref("TaskEnvelope"), "PENDING: accepted; poll /api/task/{task_id}/status/ (Location). With "
                                          "ES-STREAM: es the connection stays open instead and ends with the "
                                          "final HTTP code and body"),
            "headers": {"Location": {"description": "Where to poll the task's status", "schema": {"type": "string"}},
                        "es_task_id": _TASK_ID_HEADER}},
    "400": _BAD_REQUEST,
    "403": _AUTH_FAILED,
    "404": _detail("Image not found / Datacenter not found"),
    "412": _detail("Invalid order_by"),
    **_BODY_REFUSED,
    "417": _detail("Image status is not OK"),
    "500": _detail("The command could not be processed (it failed inside its consumer; its task's status "
                   "reads FAILURE with this code)"),
    "503": _UNAVAILABLE,
}

#: With an image store, every import, update (also of database-only fields) and delete is
#: refused while the store or its node cannot take it.
_IMAGE_SERVER_REFUSALS = {
    "423": _detail("Node is not operational (the image server's node)"),
    "428": _detail("Image server is not available"),
}


def document() -> dict[str, Any]:
    """The description: a new dict each call (callers may change it)."""
    return _with_tags(_with_common_answers(_with_idempotency_keys(_document())))


def _operations(doc: dict[str, Any]):
    """(path, method, operation) of every operation of ``doc``."""
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, operation


def _with_common_answers(doc: dict[str, Any]) -> dict[str, Any]:
    """Add to every operation the answers of the layers its request passes before its handler
    decides: the edge's and the middleware's (408, 431, 503: every operation); authentication's
    and the throttle's (403, 429) where credentials are needed; the body reader's (413, 415) where
    a body is read (a declared one, or a command's: every command reads its body). An answer the
    handler already describes is kept."""
    for _path, _method, operation in _operations(doc):
        responses = dict(operation["responses"])  # a copy: one dict may be the responses of several operations
        if operation.get("security", doc["security"]):
            responses.setdefault("403", _AUTH_FAILED)
            responses.setdefault("429", _THROTTLED)
        if "requestBody" in operation or responses.get("201") is _TASK_ANSWERS["201"]:
            for code, answer in _BODY_REFUSED.items():
                responses.setdefault(code, answer)
        for code, answer in _EDGE_AND_MIDDLEWARE.items():
            responses.setdefault(code, answer)
        operation["responses"] = dict(sorted(responses.items()))
    return doc


#: Swagger UI groups operations by tag: each path's is the first of these its path starts with.
_TAGS = (
    ("/api/image/", "images", "Server disk images"),
    ("/api/vm/", "images", None),
    ("/api/dc/{dc}/image/", "datacenter images", "Images attached to a datacenter"),
    ("/api/imagestore/", "image store", "Remote image repositories and their images"),
    ("/api/task/", "tasks", "Every command is a task: its status"),
    ("/api/accounts/log", "authentication", "Tokens for Authorization: Token <token>"),
    ("/api/accounts/", "accounts", "Users and groups (SuperAdmin)"),
    ("/api/dc/", "datacenters", "Datacenters and their groups (SuperAdmin)"),
    ("/", "operations", "Health and metrics, for load balancers and monitoring"),
)


def _with_tags(doc: dict[str, Any]) -> dict[str, Any]:
    """Tag every operation by its path (``_TAGS``), and list the tags."""
    for path, _method, operation in _operations(doc):
        operation["tags"] = [next(tag for prefix, tag, _ in _TAGS if path.startswith(prefix))]
    doc["tags"] = [{"name": tag, "description": about} for _prefix, tag, about in _TAGS if about]
    return doc


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Optional: names this command, so that sending it again (a retry) gets the first one's task "
                   "and answer instead of a second command (an addition to the original API). 400 if malformed.",
}


def _with_idempotency_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """Every operation that answers with a task (201 PENDING) takes an Idempotency-Key."""
    for _path, method, operation in _operations(doc):
        if method in ("post", "put", "delete") and operation["responses"].get("201") is _TASK_ANSWERS["201"]:
            operation["parameters"] = [*operation.get("parameters", []), _IDEMPOTENCY_KEY]
            # A malformed key is 400 {"detail"}, which every command's 400 admits already (the body
            # reader's refusals have that shape too).
            refused = operation["responses"]["400"]
            operation["responses"] = {**operation["responses"], "400": {
                **refused, "description": refused["description"] + "; a malformed Idempotency-Key"}}
    return doc


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagesvc",
            "version": "1.0.0",
            "description": "Server disk images, compatible with the Danube Cloud image API. Authenticate with "
                           "the ES-API-KEY header, or with Authorization: Token <token> (POST "
                           "/api/accounts/login/). Every command is a task: it answers 200 (or the consumer's "
                           "refusal) when it finished within a short window, 201 PENDING otherwise (send "
                           "ES-STREAM: es to wait on the connection); GET /api/task/{task_id}/status/ follows it. "
                           "Refusals are {\"detail\": ...} with the original API's codes, field errors a 400 "
                           "task envelope. What the server itself refuses before any operation is reached (a "
                           "request that is not valid HTTP: 400) is {\"detail\": ...} too, with Connection: "
                           "close. The image server (imagesvc image-server) describes itself at its own "
                           "GET /openapi.json.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "ES-API-KEY"},
                # Not an HTTP scheme: "Token" is not a registered one (Swagger UI offers only basic
                # and bearer), so the whole header value is the "key": Token <token>.
                "token": {"type": "apiKey", "in": "header", "name": "Authorization",
                          "description": "Token <token>, the whole header value, with a token from "
                                         "POST /api/accounts/login/ (valid IMAGESVC_TOKEN_SECONDS)"},
            },
            "schemas": {
                "Detail": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
                "TaskEnvelope": {
                    "type": "object",
                    "required": ["task_id", "status", "result"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["SUCCESS", "FAILURE", "PENDING", "STARTED"]},
                        "result": {},
                    },
                },
                "TaskStatus": {
                    "description": "A task's status: SUCCESS (200), PENDING or STARTED (201, with progress "
                                   "while the task reports it), FAILURE (the failed command's code)",
                    "type": "object",
                    "required": ["task_id", "status", "result"],
                    "properties": {
                        "task_id": {"type": "string"},
                        "status": {"type": "string", "enum": ["SUCCESS", "FAILURE", "PENDING", "STARTED"]},
                        "result": {"description": "The command's result; null while it runs"},
                        "progress": _ref("Progress"),
                    },
                },
                "Progress": {
                    "description": "Bytes done of a running import or snapshot export (an addition to the "
                                   "original API)",
                    "type": "object",
                    "required": ["done", "total"],
                    "properties": {"done": {"type": "integer", "minimum": 0},
                                   "total": {"type": ["integer", "null"], "minimum": 0,
                                             "description": "null while unknown"}},
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["alive", "ready", "not ready"]},
                                   "checks": {"type": "object", "additionalProperties": {
                                       "type": "string", "enum": ["ok", "failing"]}}},
                },
                "Image": {
                    "type": "object",
                    "properties": {
                        "dc_bound": {"type": "boolean"}, "name": {"type": "string"}, "uuid": {"type": "string"},
                        "alias": {"type": "string"}, "version": {"type": "string"}, "owner": {"type": "string"},
                        "access": {"type": "integer"}, "desc": {"type": "string"}, "ostype": {"type": "integer"},
                        "size": {"type": "integer"}, "resize": {"type": "boolean"}, "deploy": {"type": "boolean"},
                        "tags": {"type": "array", "items": {"type": "string"}}, "status": {"type": "integer"},
                        "created": {"type": "string", "format": "date-time"},
                        "dcs": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "ImportImage": {
                    "type": "object",
                    "required": ["manifest_url"],
                    "properties": {
                        "manifest_url": {"type": "string", "format": "uri", "maxLength": 1024},
                        "file_url": {"type": "string", "format": "uri", "maxLength": 1024},
                        "dc": {"type": "string"},
                        **_IMAGE_FIELDS,
                    },
                },
                "UpdateImage": {"type": "object", "properties": dict(_IMAGE_FIELDS)},
            },
        },
        "security": [{"apiKey": []}, {"token": []}],
        "paths": {
            "/api/image/": {
                "get": {
                    "operationId": "image_list",
                    "summary": "List server disk images (whole, or a page; filtered)",
                    "description": "Checks in this order: credentials and permission (403), order_by (412), "
                                   "full/extended (400), then limit, marker and the filters (400). The filters "
                                   "narrow what the caller may see, never widen it.",
                    "parameters": [*_LIST_PARAMETERS, *_paging("the name"), _MARKER_CREATED, *_IMAGE_FILTERS],
                    "responses": {"200": _STREAMED_PAGE_OK, "400": _BAD_LIST_QUERY, "403": _AUTH_FAILED,
                                  "412": _detail("Invalid order_by")},
                }
            },
            "/api/image/{name}/": {
                "parameters": [_NAME],
                "get": {
                    "operationId": "image_show",
                    "summary": "Show a server disk image",
                    "parameters": [{"name": "extended", "in": "query", "schema": _BOOL}],
                    "responses": {"200": {**_json(_ref("TaskEnvelope"), "SUCCESS"), "headers": {"ETag": {
                        "description": 'The image\'s version, "v<n>": send it back in If-Match to change only '
                                       "this version", "schema": {"type": "string"}}}},
                                  "400": _BAD_FLAG, "403": _AUTH_FAILED,
                                  "404": _detail("Image not found"), "412": _detail("Invalid order_by")},
                },
                "post": {
                    "operationId": "image_import",
                    "summary": "Import a server disk image from a manifest URL",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ImportImage")}}},
                    "responses": {**_TASK_ANSWERS, "406": _detail("Image already exists"), **_IMAGE_SERVER_REFUSALS},
                },
                "put": {
                    "operationId": "image_update",
                    "summary": "Update a server disk image",
                    "parameters": [_IF_MATCH],
                    "requestBody": {"content": {"application/json": {"schema": _ref("UpdateImage")}}},
                    "responses": {**_TASK_ANSWERS, "412": _detail("Invalid order_by / Precondition failed (If-Match)"),
                                  **_IMAGE_SERVER_REFUSALS},
                },
                "delete": {
                    "operationId": "image_delete",
                    "summary": "Delete a server disk image",
                    "parameters": [_IF_MATCH],
                    "responses": {**_TASK_ANSWERS, "412": _detail("Invalid order_by / Precondition failed (If-Match)"),
                                  "423": _IMAGE_SERVER_REFUSALS["423"], "428": _detail(
                        "Image is used by some VMs (in a datacenter it is attached to) / Image server is not "
                        "available")},
                },
            },
            "/api/image/{name}/vm/": {
                "parameters": [_NAME],
                "get": {
                    "operationId": "image_vm_list",
                    "summary": "VMs using an image in the datacenters it is attached to: hostnames, or with "
                               "full/extended objects {hostname, uuid, dc, node, status, ostype, disks}",
                    "parameters": [
                        {"name": "full", "in": "query", "schema": _BOOL},
                        {"name": "extended", "in": "query", "schema": _BOOL},
                        {"name": "order_by", "in": "query", "schema": {"type": "string", "enum": ["hostname",
                                                                                              "-hostname"]}},
                        *_paging("the hostname"),
                    ],
                    "responses": {"200": _PAGE_OK, "400": _BAD_LIST_QUERY, "403": _AUTH_FAILED,
                        "404": _detail("Image not found"), "412": _detail("Invalid order_by")},
                },
            },
            "/api/vm/{vm}/snapshot/{snapname}/image/{name}/": {
                "parameters": [
                    {"name": "vm", "in": "path", "required": True, "schema": {"type": "string"},
                     "description": "the VM's hostname or uuid"},
                    {"name": "snapname", "in": "path", "required": True, "schema": {"type": "string"}},
                    _NAME,
                ],
                "post": {
                    "operationId": "image_snapshot",
                    "summary": "Create a server disk image from a VM disk snapshot (exported by the VM's node "
                               "agent into the image store; bound to the VM's datacenter)",
                    "requestBody": {"content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {"disk_id": {"type": "integer", "minimum": 1, "default": 1},
                                       "dc": {"type": "string"},
                                       **{k: v for k, v in _IMAGE_FIELDS.items() if k != "dc_bound"}},
                    }}}},
                    "responses": {**_TASK_ANSWERS,
                                  "404": _detail("VM not found / Snapshot not found / Datacenter not found"),
                                  "406": _detail("Image already exists"),
                                  "412": _detail("Invalid disk_id / Invalid order_by"),
                                  "417": _detail("VM snapshot status is not OK"),
                                  "423": _detail("Node is not operational / VM is not operational"),
                                  "428": _detail("Image server is not available")},
                },
            },
            "/api/dc/{dc}/image/": {
                "parameters": [_DC],
                "get": {
                    "operationId": "dc_image_list",
                    "summary": "Images attached to a datacenter (its Admins and SuperAdmins); whole, or a page; "
                               "filtered as GET /api/image/",
                    "parameters": [*_LIST_PARAMETERS, *_paging("the name"), _MARKER_CREATED, *_IMAGE_FILTERS],
                    "responses": {"200": _STREAMED_PAGE_OK, "400": _BAD_LIST_QUERY, "403": _AUTH_FAILED,
                                  "404": _detail("Datacenter not found"), "412": _detail("Invalid order_by")},
                },
            },
            "/api/dc/{dc}/image/{name}/": {
                "parameters": [_DC, _NAME],
                "get": {
                    "operationId": "dc_image_show",
                    "summary": "An image attached to a datacenter",
                    "parameters": [{"name": "extended", "in": "query", "schema": _BOOL}],
                    "responses": {"200": _json(_ref("TaskEnvelope"), "SUCCESS"), "403": _AUTH_FAILED,
                                  "404": _detail("Datacenter not found, or Image not found (not attached)")},
                },
                "post": {
                    "operationId": "dc_image_attach",
                    "summary": "Attach an image to a datacenter (SuperAdmin; clears dc_bound); 201 when done",
                    "responses": {**_TASK_ANSWERS, "406": _detail("Image already exists (already attached)")},
                },
                "delete": {
                    "operationId": "dc_image_detach",
                    "summary": "Detach an image from a datacenter (SuperAdmin; clears dc_bound); refused while "
                               "a VM of that datacenter uses the image",
                    "responses": {**_TASK_ANSWERS, "428": _detail("Image is used by some VMs")},
                },
            },
            "/api/task/{task_id}/status/": {
                "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {
                    "operationId": "task_status",
                    "summary": "Status of a task (every command is a task)",
                    "description": "200 once it succeeded; 201 while it runs (PENDING, STARTED), with "
                                   "progress while it reports any; once it failed, the failed command's code "
                                   "with status FAILURE. The /state/ form of the path answers the same.",
                    "responses": {
                        "200": _json(_ref("TaskStatus"), "SUCCESS"),
                        "201": _json(_ref("TaskStatus"), "PENDING or STARTED, with progress while it reports any"),
                        "400": _json(_ref("TaskStatus"), "FAILURE: field errors, or a failure such as a checksum "
                                                         "mismatch (result: returncode, message, detail, code)"),
                        "403": _json({"anyOf": [_ref("Detail"), _ref("TaskStatus")]},
                                     "Forbidden: credentials, or Permission denied (detail); or FAILURE with 403"),
                        "404": _json({"anyOf": [_ref("Detail"), _ref("TaskStatus")]},
                                     "Task does not exist (anymore) (detail); or FAILURE with 404"),
                        **{code: _json(_ref("TaskStatus"), f"FAILURE with {code}: {why}") for code, why in (
                            ("406", "already exists"), ("412", "a precondition (order_by, If-Match, disk_id)"),
                            ("417", "a status is not OK"), ("423", "a node, VM or task is not operational"),
                            ("428", "the image server is not available, or the image is used"),
                            ("500", "the command could not be processed"))},
                    },
                },
            },
            "/api/accounts/login/": {
                "post": {
                    "operationId": "login",
                    "summary": "A token for `Authorization: Token <token>` (valid IMAGESVC_TOKEN_SECONDS)",
                    "security": [],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["username", "password"],
                        "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}}}},
                    "responses": {
                        "200": _json({"type": "object", "required": ["token", "expires", "detail"], "properties": {
                            "token": {"type": "string"}, "expires": {"type": "string", "format": "date-time"},
                            "detail": {"type": "string"}}}, "Logged in"),
                        "400": _json({"type": "object"}, "Missing fields, or wrong username or password"),
                        "403": _detail("User account is not allowed to access API"),
                        "429": _detail("Throttled: too many failed logins for the user name or from the client "
                                       "address (IMAGESVC_LOGIN_THROTTLE), too many password checks at once, or "
                                       "too many requests from the address (IMAGESVC_THROTTLE)",
                                       {"Retry-After": _RETRY_AFTER}),
                    },
                },
            },
            "/api/accounts/logout/": {
                "get": {
                    "operationId": "logout",
                    "summary": "End the token the request authenticated with",
                    "responses": {"200": _detail("Bye."), "403": _AUTH_FAILED},
                },
            },
            **_administration(),
            **_imagestore(),
            **_operational(),
        },
    }


def _operational() -> dict[str, Any]:
    """Health and metrics (services/gateway/app.py, shared/health.py): for anybody."""
    return {
        "/healthz": {"get": {"operationId": "alive", "summary": "Liveness: the process answers", "security": [],
                             "responses": {"200": _json(_ref("Health"), "alive")}}},
        "/readyz": {"get": {
            "operationId": "ready", "security": [],
            "summary": "Readiness: the database (at the migrations' head), the broker and the image store answer",
            "responses": {"200": _json(_ref("Health"), "ready"), "503": _json(
                {"anyOf": [_ref("Health"), _ref("Detail")]},
                "not ready: which check fails (the reason goes to the log); or the server's own 503 "
                "(detail, with Retry-After)")}}},
        "/metrics": {"get": {
            "operationId": "metrics", "security": [],
            "summary": "Prometheus metrics (docs/metrics.md); 404 with IMAGESVC_METRICS=off",
            "responses": {"200": {"description": "The Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "404": _detail("Not found (IMAGESVC_METRICS=off)")}}},
    }


def _imagestore() -> dict[str, Any]:
    """Remote image repositories (services/gateway/imagestore.py), for SuperAdmins and ImageImportAdmins."""
    ok = _json(_ref("TaskEnvelope"), "SUCCESS")
    flags = [{"name": "full", "in": "query", "schema": _BOOL}, {"name": "extended", "in": "query", "schema": _BOOL}]
    repository = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"}}
    uuid = {"name": "uuid", "in": "path", "required": True, "schema": {"type": "string"}}
    refresh_answers = {
        "200": _json(_ref("TaskEnvelope"), "SUCCESS: the repository objects (name, url, last_update, image_count, "
                                           "error)"),
        "201": _TASK_ANSWERS["201"],
        "400": _json({"anyOf": [_ref("TaskEnvelope"), _ref("Detail")]},
                     "FAILURE: a repository could not be refreshed (its error is recorded); or a body that is not "
                     "a JSON object (detail)"),
        "403": _AUTH_FAILED,
        "412": _detail("Invalid order_by"),
        "423": _detail("Task is already running"),
        "500": _TASK_ANSWERS["500"],
        "503": _UNAVAILABLE,
    }
    return {
        "/api/imagestore/": {
            "get": {"operationId": "imagestore_list",
                    "summary": "Repository names; full/extended: their objects (the local one for SuperAdmins)",
                    "parameters": [*flags, *_paging("the repository's name")],
                    "responses": {"200": _PAGE_OK, "400": _BAD_LIST_QUERY, "403": _AUTH_FAILED}},
            "put": {"operationId": "imagestore_refresh_all", "summary": "Download every repository's image list",
                    "responses": refresh_answers},
        },
        "/api/imagestore/{name}/": {
            "parameters": [repository],
            "get": {"operationId": "imagestore_show", "summary": "One repository",
                    "responses": {"200": ok, "403": _AUTH_FAILED, "404": _detail("ImageStore not found")}},
            "put": {"operationId": "imagestore_refresh", "summary": "Download one repository's image list",
                    "responses": {**refresh_answers, "404": _detail("ImageStore not found")}},
        },
        "/api/imagestore/{name}/image/": {
            "parameters": [repository],
            "get": {"operationId": "imagestore_image_list",
                    "summary": "Image uuids of the last refresh, newest first; full/extended: image objects",
                    "parameters": [*flags, *_paging("the image's uuid")],
                    "responses": {"200": _PAGE_OK, "400": _BAD_LIST_QUERY, "403": _AUTH_FAILED,
                                  "404": _detail("ImageStore not found")}},
        },
        "/api/imagestore/{name}/image/{uuid}/": {
            "parameters": [repository, uuid],
            "get": {"operationId": "imagestore_image_show", "summary": "One image of the last refresh",
                    "responses": {"200": ok, "403": _AUTH_FAILED,
                                  "404": _detail("ImageStore not found / Image not found")}},
            "post": {"operationId": "imagestore_image_import",
                     "summary": "Import a repository image: POST /api/image/{name}/ with the repository's manifest "
                                "URL; name defaults to the manifest's",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "properties": {
                             "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$", "maxLength": 32},
                             "dc": {"type": "string"}, **_IMAGE_FIELDS}}}}},
                     "responses": {**_TASK_ANSWERS, "404": _detail("ImageStore not found / Image not found / "
                                                                   "Datacenter not found"),
                                   "406": _detail("Image already exists (its uuid or name)")}},
        },
    }


def _administration() -> dict[str, Any]:
    """The SuperAdmin account administration routes (services/gateway/administration.py)."""
    ok = _json(_ref("TaskEnvelope"), "SUCCESS")
    listed = {"parameters": [{"name": "full", "in": "query", "schema": _BOOL}],
              "responses": {"200": ok, "400": _BAD_FLAG, "403": _AUTH_FAILED}}

    def path(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    def one(kind: str, create_body: dict[str, Any], param: str) -> dict[str, Any]:
        return {
            "parameters": [path(param)],
            "get": {"operationId": f"{kind}_show", "summary": f"Show a {kind} (SuperAdmin)",
                    "responses": {"200": ok, "403": _AUTH_FAILED, "404": _detail(f"{kind} not found")}},
            "post": {"operationId": f"{kind}_create", "summary": f"Create a {kind} (SuperAdmin)",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "properties": create_body}}}},
                     "responses": {"201": _json(_ref("TaskEnvelope"), "Created"), "400": _BAD_REQUEST,
                                   "403": _AUTH_FAILED, "406": _detail(f"{kind} already exists"), **_BODY_REFUSED,
                                   # Checked first (a 400), so only if it is removed meanwhile.
                                   "404": _detail("A user named in the body no longer exists")}},
        }

    names = {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}
    grant = {"parameters": [path("dc"), path("name")],
             "post": {"operationId": "dc_group_attach", "summary": "Grant a group's permissions in a datacenter",
                      "responses": {"201": ok, "403": _AUTH_FAILED, "404": _detail("Not found"),
                                    "406": _detail("Group already exists (already attached)")}},
             "delete": {"operationId": "dc_group_detach", "summary": "Take a group's permissions in a datacenter back",
                        "responses": {"200": ok, "403": _AUTH_FAILED, "404": _detail("Not found")}}}
    return {
        "/api/accounts/user/": {"get": {"operationId": "user_list", "summary": "Users (SuperAdmin)", **listed}},
        "/api/accounts/user/{username}/": one("user", {"is_super_admin": _BOOL, "api_access": _BOOL,
                                                       "password": {"type": "string"}}, "username"),
        "/api/accounts/user/{username}/apikeys/": {
            "parameters": [path("username")],
            "put": {"operationId": "user_new_api_key", "summary": "A new API key for the user, shown this once",
                    "responses": {"200": ok, "403": _AUTH_FAILED, "404": _detail("User not found")}}},
        "/api/accounts/group/": {"get": {"operationId": "group_list", "summary": "Groups (roles)", **listed}},
        "/api/accounts/group/{name}/": one("group", {"permissions": names, "users": names}, "name"),
        "/api/dc/": {"get": {"operationId": "dc_list", "summary": "Datacenters (SuperAdmin)", **listed}},
        "/api/dc/{dc}/": one("dc", {"owner": _USERNAME, "access": {"type": "integer", "enum": [1, 3]}},
                             "dc"),
        "/api/dc/{dc}/group/": {"parameters": [path("dc")],
                                "get": {"operationId": "dc_group_list", "summary": "Groups attached to a datacenter",
                                        "responses": {"200": ok, "403": _AUTH_FAILED, "404": _detail("Not found")}}},
        "/api/dc/{dc}/group/{name}/": grant,
    }
