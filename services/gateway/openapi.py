"""The gateway's OpenAPI 3.1 description, served at ``GET /api/openapi.json``.

Written by hand next to the routes (the framework cannot infer the original API's envelopes and
status codes); ``tests/unit/test_openapi.py`` checks that it names every route the app serves.
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


def _detail(description: str) -> dict[str, Any]:
    return _json(_ref("Detail"), description)


_AUTH_FAILED = _detail("Forbidden: missing or invalid credentials, or no permission")
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
_DC = {"name": "dc", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 16}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"}}
#: A request body that is not a JSON object is refused by the parser with ``{"detail": "JSON parse
#: error - ..."}`` (as the original's); field errors come in the task envelope.
_BAD_REQUEST = _json({"anyOf": [_ref("TaskEnvelope"), _ref("Detail")]},
                     "FAILURE: validation errors by field (task envelope), or a body that is not a JSON object "
                     "(detail)")
_BAD_FLAG = _json(_ref("TaskEnvelope"), "FAILURE: a flag that is not a boolean")
_BODY_REFUSED = {"413": _detail("Request body too large"), "415": _detail("Unsupported media type")}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
             "description": 'Optional: the ETag of GET /api/image/{name}/ ("v<version>") or *. The change is '
                            "made only if the image still has that version, else 412 Precondition failed "
                            "(an addition to the original API)."}
_TASK_ANSWERS = {
    "200": _json(_ref("TaskEnvelope"), "SUCCESS: the consumer finished within the answer window"),
    "201": _json(_ref("TaskEnvelope"), "PENDING: accepted; poll /api/task/{task_id}/status/"),
    "400": _BAD_REQUEST,
    "403": _AUTH_FAILED,
    "404": _detail("Image not found / Datacenter not found"),
    "412": _detail("Invalid order_by"),
    **_BODY_REFUSED,
    "417": _detail("Image status is not OK"),
    "503": _detail("The broker or the database is unavailable; retry later"),
}

#: With an image store, every import, update (also of database-only fields) and delete is
#: refused while the store or its node cannot take it.
_IMAGE_SERVER_REFUSALS = {
    "423": _detail("Node is not operational (the image server's node)"),
    "428": _detail("Image server is not available"),
}


def document() -> dict[str, Any]:
    return _with_idempotency_keys(_document())


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Optional: names this command, so that sending it again (a retry) gets the first one's task "
                   "and answer instead of a second command (an addition to the original API). 400 if malformed.",
}


def _with_idempotency_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """Every operation that answers with a task (201 PENDING) takes an Idempotency-Key."""
    for item in doc["paths"].values():
        for method, operation in item.items():
            if method not in ("post", "put", "delete"):
                continue
            responses = operation.get("responses", {})
            if responses.get("201") is _TASK_ANSWERS["201"]:
                operation["parameters"] = [*operation.get("parameters", []), _IDEMPOTENCY_KEY]
                if responses.get("400") is not _BAD_REQUEST:  # a malformed key is 400 {"detail"}
                    responses["400"] = _json({"anyOf": [responses["400"]["content"]["application/json"]["schema"],
                                                        _ref("Detail")]},
                                             responses["400"]["description"] + "; a malformed Idempotency-Key (detail)")
    return doc


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagesvc",
            "version": "1.0.0",
            "description": "Server disk images, compatible with the Danube Cloud image API. Authenticate with "
                           "the ES-API-KEY header. Every command answers 200 when it finished within a short "
                           "window, 201 PENDING otherwise (send ES-STREAM: es to wait on the connection).",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "ES-API-KEY"}},
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
        "security": [{"apiKey": []}],
        "paths": {
            "/api/image/": {
                "get": {
                    "operationId": "image_list",
                    "summary": "List server disk images",
                    "parameters": _LIST_PARAMETERS,
                    "responses": {"200": _json(_ref("TaskEnvelope"), "SUCCESS"), "400": _json(
                        _ref("TaskEnvelope"), "Invalid flag"), "403": _AUTH_FAILED,
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
                    ],
                    "responses": {"200": _json(_ref("TaskEnvelope"), "SUCCESS"), "400": _json(
                        _ref("TaskEnvelope"), "Invalid flag"), "403": _AUTH_FAILED,
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
                    "summary": "Images attached to a datacenter (its Admins and SuperAdmins)",
                    "parameters": _LIST_PARAMETERS,
                    "responses": {"200": _json(_ref("TaskEnvelope"), "SUCCESS"), "403": _AUTH_FAILED,
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
                    "responses": {
                        "200": _json(_ref("TaskEnvelope"), "SUCCESS"),
                        "201": _json(_ref("TaskEnvelope"), "PENDING or STARTED"),
                        "400": _json(_ref("TaskEnvelope"), "FAILURE (validation)"),
                        "403": _AUTH_FAILED,
                        "404": _detail("Task does not exist (anymore), or the task failed with 404"),
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
                                       "address (IMAGESVC_LOGIN_THROTTLE), or too many password checks at once; "
                                       "Retry-After says when to try again"),
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
        },
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
        "400": _json(_ref("TaskEnvelope"), "FAILURE: a repository could not be refreshed (its error is recorded)"),
        "403": _AUTH_FAILED,
        "423": _detail("Task is already running"),
        "503": _detail("The broker or the database is unavailable; retry later"),
    }
    return {
        "/api/imagestore/": {
            "get": {"operationId": "imagestore_list",
                    "summary": "Repository names; full/extended: their objects (the local one for SuperAdmins)",
                    "parameters": flags, "responses": {"200": ok, "400": _BAD_FLAG, "403": _AUTH_FAILED}},
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
                    "parameters": flags,
                    "responses": {"200": ok, "400": _BAD_FLAG, "403": _AUTH_FAILED,
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
                                   "403": _AUTH_FAILED, "406": _detail(f"{kind} already exists"), **_BODY_REFUSED}},
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
