"""The layout keeps its promises: light function imports, the engine's API in one place,
development commands that say so where the development tooling is not installed, and one
root for every error."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys

import flask
import pytest

import shared
import shared.engine
from shared import web
from shared.cli import EXIT_NOT_INSTALLED, main
from shared.db import DatabaseUnavailable
from shared.dev.stack import REPO_ROOT
from shared.errors import DependencyUnavailable, OtelWorkerError
from shared.storage import StorageUnavailable


@pytest.mark.parametrize("function", ["submit", "status", "ingress"])
def test_a_function_that_computes_nothing_never_loads_numpy(function: str) -> None:
    # Import the function as functions-framework does, then build the engine's parameters
    # as submit does for a request: numpy stays unloaded (it costs every cold start).
    script = (
        "import sys\n"
        f"import functions.{function}.main\n"
        "from shared import config\n"
        "config.load(config.AnalysisSettings).engine_params()\n"
        "engine = ('numpy', 'shared.engine.')\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(engine))))\n"
    )
    env = {**os.environ, "MINIO_ACCESS_KEY": "key", "MINIO_SECRET_KEY": "secret-key"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["shared.engine.params"]


def test_every_name_of_the_engine_api_resolves() -> None:
    for name in shared.engine.__all__:
        assert getattr(shared.engine, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'analyse'"):
        _ = shared.engine.analyse


@pytest.mark.parametrize("command", [["dev"], ["demo"], ["seed", "--csv", "out.csv"]])
def test_a_development_command_without_the_tooling_says_so(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What the image holds: the wheel leaves shared/dev out.
    monkeypatch.setitem(sys.modules, "shared.dev", None)
    assert main(command) == EXIT_NOT_INSTALLED
    err = capsys.readouterr().err
    assert f"otel-worker {command[0]}: a development command" in err
    assert "make install" in err


def _error_classes() -> list[type[BaseException]]:
    found = []
    for module in pkgutil.walk_packages(shared.__path__, "shared."):
        if module.name.startswith("shared.rpc"):
            continue  # generated stubs
        loaded = importlib.import_module(module.name)
        for value in vars(loaded).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == module.name
            ):
                found.append(value)
    return found


def test_every_error_of_shared_has_one_root() -> None:
    errors = _error_classes()
    assert len(errors) >= 19
    strays = [
        f"{e.__module__}.{e.__qualname__}" for e in errors if not issubclass(e, OtelWorkerError)
    ]
    assert strays == []
    assert issubclass(DatabaseUnavailable, DependencyUnavailable)
    assert issubclass(StorageUnavailable, DependencyUnavailable)


@pytest.mark.parametrize(
    "error", [DatabaseUnavailable("database down"), StorageUnavailable("object store down")]
)
def test_an_unreachable_dependency_is_a_503_by_default(error: DependencyUnavailable) -> None:
    def handler(request: flask.Request) -> flask.Response:
        raise error

    guarded = web.guarded(handler, max_body=web.SMALL_BODY)
    with flask.Flask(__name__).test_request_context("/", method="POST", data=b"{}"):
        response = guarded(flask.request)
    assert response.status_code == 503
    assert str(error) in response.get_data(as_text=True)
