"""Bounds of every value that crosses the API: each must fit the catalog column it lands in.

A value the catalog cannot store must be refused when it arrives (a 422 naming the field), not
when the catalog insert fails after the episode's files were published.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Final

from pydantic import AfterValidator

INT4_MAX: Final = 2**31 - 1  # the catalog's Integer columns (int4 on PostgreSQL)
INT8_MAX: Final = 2**63 - 1  # BigInteger columns, and every other integer a contract carries
INT8_MIN: Final = -(2**63)


def assume_utc(value: datetime) -> datetime:
    """A naive datetime is read as UTC; an aware one is converted (the catalog compares in UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


def no_nul(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters; refusing them here names the field."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(assume_utc)]
TIME_NOTE: Final = "ISO 8601; a time without a UTC offset is taken as UTC"  # for query descriptions
Text = Annotated[str, AfterValidator(no_nul)]
