"""The layout keeps its promises: light function imports, the engine's API in one place, and
development commands that say so where the development tooling is not installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import shared.engine
from shared.cli import EXIT_NOT_INSTALLED, main
from shared.dev.stack import REPO_ROOT


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
