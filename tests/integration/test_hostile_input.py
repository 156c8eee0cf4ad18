"""Data PostgreSQL refuses to store (a `psycopg.DataError`) is the caller's error: a 400,
which a broker dead-letters, never a 500 it retries."""

from __future__ import annotations

import flask
import psycopg
import pytest

from shared import web
from tests.conftest import Database


@pytest.fixture
def app() -> flask.Flask:
    return flask.Flask("hostile")


def test_data_the_database_refuses_is_poison_not_a_retried_500(
    app: flask.Flask, postgres: Database
) -> None:
    def store(request: flask.Request) -> flask.Response:
        with postgres.connect() as conn:
            conn.execute("SELECT %s::int", (request.get_data(as_text=True),))
        return flask.Response(status=200)

    handler = web.guarded(store, max_body=1024, poison=(psycopg.DataError,))
    with app.test_request_context("/", method="POST", data="not a number"):
        response = handler(flask.request)
    assert response.status_code == 400
    assert "cannot be stored" in response.get_json()["error"]
    # Without it the same failure is an internal error, which a broker retries.
    unguarded = web.guarded(store, max_body=1024)
    with app.test_request_context("/", method="POST", data="not a number"):
        assert unguarded(flask.request).status_code == 500
