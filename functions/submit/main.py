"""The `submit` function (functions-framework, HTTP signature).

Liveness only so far: its job handling lands with the function-set issue.
"""

from __future__ import annotations

import flask
import functions_framework


@functions_framework.http
def submit(request: flask.Request) -> flask.Response:
    """Answer health checks; anything else is not served yet (501)."""
    if request.path == "/healthz":
        return flask.jsonify(status="ok")
    response = flask.jsonify(error="not implemented yet", function="submit")
    response.status_code = 501
    return response
