"""The reliability suite: each test is one scenario on real parts, and each records the
figures it measured (jobs, losses, duplicates, latency) for the scoreboard printed at the
end of the run and written to `artifacts/reliability-scoreboard.txt`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROLES, Database, S3Server
from tests.stack import Stack, start_stack

HERE = Path(__file__).parent
SCOREBOARD_FILE = Path("artifacts") / "reliability-scoreboard.txt"


@dataclass
class Figures:
    """What one scenario measured; None: not a figure of this scenario."""

    jobs: int | None = None
    lost: int | None = None
    duplicates: int | None = None
    latency: str | None = None
    note: str = ""


@dataclass
class Row:
    scenario: str
    result: str = "not run"
    figures: Figures = field(default_factory=Figures)


_rows: dict[str, Row] = {}


def _scenario(item: pytest.Item) -> str:
    name = item.name.removeprefix("test_").replace("_", " ")
    return f"{item.path.stem.removeprefix('test_')}: {name}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder carries the `reliability` marker (`-m reliability`)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def score(request: pytest.FixtureRequest) -> Figures:
    """The figures of this scenario, filled in by the test, shown on the scoreboard."""
    row = _rows.setdefault(request.node.nodeid, Row(_scenario(request.node)))
    return row.figures


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    row = _rows.get(report.nodeid)
    if row is None:
        return
    # The call's outcome, unless setting up or tearing down failed.
    if (report.when == "call" or report.outcome != "passed") and row.result in {
        "not run",
        "passed",
    }:
        row.result = report.outcome


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def scoreboard() -> list[str]:
    """The table: one line per scenario that ran."""
    header = ("scenario", "result", "jobs", "lost", "dup", "latency", "note")
    lines = [
        (
            row.scenario,
            row.result,
            _cell(row.figures.jobs),
            _cell(row.figures.lost),
            _cell(row.figures.duplicates),
            _cell(row.figures.latency),
            row.figures.note,
        )
        for row in _rows.values()
    ]
    widths = [max(len(cells[k]) for cells in (header, *lines)) for k in range(len(header))]

    def render(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    return [render(header), render(tuple("-" * w for w in widths)), *map(render, lines)]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if not _rows:
        return
    lines = scoreboard()
    terminalreporter.section("reliability scoreboard")
    for line in lines:
        terminalreporter.write_line(line.rstrip())
    path = config.rootpath / SCOREBOARD_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(line.rstrip() + "\n" for line in lines))
    terminalreporter.write_line(f"(written to {SCOREBOARD_FILE})")


LEASE_SECONDS = 5
"""The shortest lease the settings allow: a killed attempt is taken over within seconds."""


@pytest.fixture(scope="package")
def reliable_stack(seeded: Database, s3: S3Server) -> Iterator[Stack]:
    """The whole system with the shortest lease, for scenarios that kill and restart its
    services (they put back what they change). Stopped when this folder's tests end: the
    session's stack works on the same jobs table, and its sweep must not see two systems."""
    started = start_stack(seeded, s3, roles=ROLES, JOB_LEASE_SECONDS=str(LEASE_SECONDS))
    yield started
    started.supervisor.stop()
