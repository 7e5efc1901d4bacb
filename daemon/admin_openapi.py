"""The admin API's OpenAPI 3.1 document, served at ``/api/openapi.json``.

Written by hand next to the handlers (``octopus_crm.daemon.admin``); ``tests/daemon/test_admin_openapi.py``
runs schemathesis against it, so a handler that answers outside this document fails the suite.
"""

from __future__ import annotations

from typing import Any

from octopus_crm.adapters.registry import ADAPTERS

__all__ = ["openapi"]

_ERROR = {
    "type": "object",
    "required": ["class", "code", "message"],
    "properties": {
        "class": {"type": "string", "enum": ["retryable", "permanent", "auth", "config"]},
        "code": {"type": "string"},
        "message": {"type": "string"},
    },
}
_PROBLEM = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_FIELD_ERRORS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["path", "message"],
        "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
    },
}
_REFUSED = {
    "type": "object",
    "required": ["success"],
    "properties": {
        "success": {"const": False},
        "error": {"oneOf": [_ERROR, {"type": "string"}]},
        "errors": _FIELD_ERRORS,
        "reason": {"type": "string"},
    },
}
_CONFIG = {
    "type": "object",
    "description": "The vendor's settings: GET /api/crm/supported gives each type's JSON Schema under settings."
    ' Secrets are write-only; send "***" (or leave them out) to keep the stored value.',
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _common(*extra: int) -> dict[str, Any]:
    answers: dict[str, Any] = {
        "401": _json(_PROBLEM, "No or wrong bearer token."),
        "403": _json(_PROBLEM, "Without a token: not a loopback request."),
    }
    for status in extra:
        answers[str(status)] = {
            400: _json(_REFUSED, "The body is not valid (each error names its key path)."),
            404: _json({"type": "object"}, "No such integration."),
            409: _json(_REFUSED, "The configuration file cannot be written here (read-only, a ConfigMap)."),
            413: _json(_PROBLEM, "The body is too large."),
            415: _json(_PROBLEM, "The body is not application/json."),
            422: _json(_REFUSED, "The new configuration does not validate; the running one is kept."),
            429: _json(_REFUSED, "Too many connection tests; see Retry-After."),
        }[status]
    return answers


def openapi() -> dict[str, Any]:
    types = sorted(ADAPTERS)
    candidate = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": types},
            "config": _CONFIG,
            "id": {"type": "string", "description": 'An integration whose stored secrets fill the "***" ones.'},
        },
    }
    by_id = {
        "type": "object",
        "required": ["integrationId"],
        "properties": {"integrationId": {"type": "string"}},
    }
    tested = {
        "type": "object",
        "required": ["success"],
        "properties": {
            "success": {"type": "boolean"},
            "tested": {"type": "boolean"},
            "latencyMs": {"type": "number"},
            "integrationId": {"type": "string"},
            "error": _ERROR,
            "reason": {"type": "string"},
        },
    }
    configure = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": types},
            "config": _CONFIG,
            "enabled": {"type": "boolean", "default": True},
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]+$"},
            "name": {"type": "string"},
            "rules": {"type": "object"},
            "dryRun": {"type": "boolean", "default": False},
            "events": {"type": "array", "items": {"type": "object"}, "maxItems": 20},
        },
    }
    configured = {
        "type": "object",
        "required": ["success"],
        "properties": {
            "success": {"type": "boolean"},
            "dryRun": {"type": "boolean"},
            "integrationId": {"type": "string"},
            "created": {"type": "boolean"},
            "version": {"type": "string"},
            "applied": {"type": "boolean"},
            "reached": {"type": "boolean", "description": "dry run: whether any event was routed to it"},
            "integration": {"type": "object"},
            "results": {"type": "array", "items": {"type": "object"}},
        },
    }
    status = {
        "type": "object",
        "required": ["integrationId", "delivered", "failed", "pending", "circuit"],
        "properties": {
            "integrationId": {"type": "string"},
            "delivered": {"type": "integer"},
            "failed": {"type": "integer"},
            "pending": {"type": "integer"},
            "lastSuccess": {"type": ["object", "null"]},
            "lastError": {"type": ["object", "null"]},
            "circuit": {"type": "string"},
            "rateLimit": {"type": ["object", "null"]},
            "consumerLag": {"type": "integer"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "octopus-crm-sync admin API",
            "version": "1",
            "description": "The seed's integration management endpoints. Bearer token on every call; JSON bodies"
            ' only; credentials are write-only and come back as "***".',
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/api/crm/supported": {
                "get": {
                    "summary": "Supported systems, with the JSON Schema of each one's settings",
                    "responses": {
                        "200": _json({"type": "array", "items": {"type": "object"}}, "The supported systems."),
                        **_common(),
                    },
                }
            },
            "/api/crm/integrations": {
                "get": {
                    "summary": "Configured integrations (credential names only) and the configuration version",
                    "responses": {
                        "200": _json({"type": "array", "items": {"type": "object"}}, "The integrations."),
                        **_common(),
                    },
                }
            },
            "/api/crm/test-connection": {
                "post": {
                    "summary": "The vendor's cheapest authenticated read, for a candidate or a configured integration",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"oneOf": [candidate, by_id]}}},
                    },
                    "responses": {"200": _json(tested, "Tested (or not testable)."), **_common(400, 404, 415, 429)},
                }
            },
            "/api/crm/configure": {
                "post": {
                    "summary": "Validate, dry-run or write a new configuration version with this integration",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": configure}}},
                    "responses": {
                        "200": _json(configured, "Written (or the dry run's routes and bodies)."),
                        **_common(400, 409, 415, 422),
                    },
                }
            },
            "/api/crm/sync-status/{integrationId}": {
                "get": {
                    "summary": "Delivered, failed and pending counts, last success and error, breaker, limits, lag",
                    "parameters": [
                        {"name": "integrationId", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": _json(status, "This replica's view."), **_common(404)},
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1."), **_common()},
                }
            },
        },
    }
