"""The start-up every HTTP function shares: its settings checked at import (a bad value
stops the process naming the variable) and its HTTP server bounded against oversized and
slow requests (`serving.bound`), then, in the serving process and once, logging,
telemetry and the function's service built from lazily created clients, and the health
endpoints answered before any routing.

functions-framework imports a function's module in gunicorn's master and forks the workers:
nothing here connects or starts a thread at import (see `clients`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from http import HTTPStatus
from typing import Generic, TypeVar

import flask

from shared import clients, config, serving, telemetry, web

T = TypeVar("T")


def _not_found(error: Exception) -> flask.Response:
    return web.error_response(HTTPStatus.NOT_FOUND, f"no such resource: {flask.request.path!r}")


class HttpFunction(Generic[T]):
    """One HTTP function's start-up around `build`, which makes its service object."""

    def __init__(
        self,
        name: str,
        settings: tuple[type[config.SettingsGroup], ...],
        build: Callable[[], T],
        *,
        probe_database: bool = True,
    ) -> None:
        """Check `settings` now (exit 2 naming a bad variable) and bound the HTTP server
        functions-framework is about to start. `probe_database`: readiness also asks the
        database (a function that must answer without one says False)."""
        config.require(name, *settings, config.TelemetrySettings)
        serving.bound()
        if flask.has_app_context():  # functions-framework imports the function in its app
            # A path its catch-all route does not match (a newline in it) gets a JSON 404
            # like any other unknown path, not Flask's HTML page.
            flask.current_app.register_error_handler(HTTPStatus.NOT_FOUND, _not_found)
        self.name = name
        self._build = build
        self._probe_database = probe_database
        self.service = functools.cache(self._start)

    def _start(self) -> T:
        telemetry.start(self.name, config.load(config.TelemetrySettings), database=True)
        return self._build()

    def ready(self) -> None:
        """Raise unless this process can serve: its service built, the database answering."""
        self.service()
        if self._probe_database:
            with clients.pool().connection() as conn:
                conn.execute("SELECT 1")

    def health(self, request: flask.Request) -> flask.Response | None:
        """Start this process's service (no connection yet), then answer `/healthz`,
        `/readyz` and `/metrics`; None for any other path."""
        self.service()
        return web.health(request, self.ready)
