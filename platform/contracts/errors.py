"""Turns pydantic errors into one line per problem that names the offending field."""

from __future__ import annotations

from pydantic import ValidationError


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
