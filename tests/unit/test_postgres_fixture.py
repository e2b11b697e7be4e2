"""When the PostgreSQL fixture skips, and when it must fail instead (tests/conftest.py)."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy.exc import OperationalError

from tests.conftest import in_ci, postgres_listening, postgres_verdict

AUTH_FAILED = OperationalError(
    "connect", {}, Exception('FATAL: password authentication failed for user "postgres"')
)


def test_no_server_listening_is_a_skip_outside_ci() -> None:
    verdict = postgres_verdict(listening=False, error=None, ci=False)
    assert verdict.action == "skip"
    assert verdict.reason == "no PostgreSQL server listens on 127.0.0.1:5432"


def test_no_server_listening_fails_under_ci() -> None:
    verdict = postgres_verdict(listening=False, error=None, ci=True)
    assert verdict.action == "fail"
    assert "no PostgreSQL server listens on 127.0.0.1:5432" in verdict.reason
    assert "CI=true requires one" in verdict.reason


@pytest.mark.parametrize("ci", [False, True])
@pytest.mark.parametrize(
    "error",
    [
        AUTH_FAILED,
        OperationalError("CREATE DATABASE", {}, Exception("permission denied to create database")),
        ModuleNotFoundError("No module named 'psycopg'"),
    ],
    ids=["bad-credentials", "cannot-create-database", "no-driver"],
)
def test_a_listening_server_that_cannot_be_used_is_an_error_never_a_skip(
    error: BaseException, ci: bool
) -> None:
    verdict = postgres_verdict(listening=True, error=error, ci=ci)
    assert verdict.action == "fail"
    assert verdict.reason.startswith(
        f"PostgreSQL listens on 127.0.0.1:5432 but cannot be used: {type(error).__name__}"
    )
    assert str(error) in verdict.reason


@pytest.mark.parametrize("ci", [False, True])
def test_a_usable_server_is_used(ci: bool) -> None:
    assert postgres_verdict(listening=True, error=None, ci=ci).action == "use"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("false", False), ("0", False), ("true", True), ("TRUE", True), ("1", True)],
)
def test_ci_is_read_from_the_environment(value: str | None, expected: bool) -> None:
    assert in_ci({} if value is None else {"CI": value}) is expected


def test_listening_is_a_plain_tcp_connect() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert postgres_listening("127.0.0.1", port)
    assert not postgres_listening("127.0.0.1", port)  # closed: nothing listens there now
