"""Error bodies of the API, and pydantic errors as one line per problem that names the offending field."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, ValidationError


def describe_validation_error(error: ValidationError, root: str = "") -> str:
    lines = []
    for item in error.errors():
        path = root
        for part in item["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path = f"{path}.{part}" if path else str(part)
        lines.append(f"{path or '<root>'}: {item['msg']}")
    return "; ".join(lines)


def json_safe(value: Any) -> Any:
    """`value` with every float JSON cannot carry (NaN, infinity) replaced by its name, so an
    error that echoes a client's input can always be sent back."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


class ErrorBody(BaseModel):
    """Every error the API answers, except request validation (see ValidationErrorBody)."""

    detail: str = Field(description="what went wrong, naming the field or resource")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: body/query/path/header, then the field's path")
    msg: str
    type: str
    input: Any = Field(default=None, description="the offending value (non-finite numbers as text)")


class ValidationErrorBody(BaseModel):
    """A 422: a list of field errors when the request does not match the schema, else one message."""

    detail: str | list[FieldError]
