"""Errors that carry a field name and a fix, so every failure tells the user what to change."""

from __future__ import annotations

import json
from typing import Any


class ConfigError(Exception):
    """A config or credentials file is missing, unreadable or invalid."""

    def __init__(self, path: str, field: str | None, problem: str, fix: str) -> None:
        self.path = path
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {problem}; fix: {fix}")


class BridgeError(Exception):
    """A refused or invalid tool call; becomes a structured `is_error` tool result."""

    def __init__(self, code: str, message: str, *, field: str | None = None, fix: str | None = None) -> None:
        self.code = code
        self.field = field
        self.fix = fix
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": str(self)}
        if self.field is not None:
            body["field"] = self.field
        if self.fix is not None:
            body["fix"] = self.fix
        return {"error": body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def invalid(field: str, message: str, fix: str) -> BridgeError:
    return BridgeError("invalid_argument", message, field=field, fix=fix)


def forbidden(message: str, fix: str | None = None, *, field: str | None = None) -> BridgeError:
    return BridgeError("forbidden", message, field=field, fix=fix)


def not_found(field: str, message: str) -> BridgeError:
    return BridgeError("not_found", message, field=field)
