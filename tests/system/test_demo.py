"""`otel-worker demo` (what `make demo` runs), end to end in a temporary folder on the
embedded PostgreSQL: its printed summaries match the CSVs it saved, and it leaves nothing
running."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shared import config
from shared.dev import demo
from shared.dev.stack import free_ports
from tests.conftest import Database

SAVED_ENDINGS = (".csv", ".summary.json", ".report.html")


def _saved(section: str) -> list[str]:
    """The names of the files of a section's Saved line."""
    line = re.search(r"^Saved\s+(\S+), (\S+) and (\S+)$", section, re.M)
    assert line, section
    return [Path(path).name for path in line.groups()]


def _command(tmp_path: Path, *options: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "otel-worker"),
        "demo",
        "--embedded-postgres",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
        *options,
    ]


def test_the_demo_prints_summaries_that_match_its_csvs_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    command = _command(tmp_path)
    # A `.env` where it is started (a copy of .env.example, say) does not reach its services:
    # the demo runs on the defaults (this one would refuse the one-day job).
    (tmp_path / ".env").write_text("MAX_CSV_ROWS=1000\n")
    # What an earlier run saved is replaced, not piled up; other files are left alone.
    (tmp_path / "out").mkdir()
    stale = [tmp_path / "out" / f"distance_20240101_0badc0de{end}" for end in SAVED_ENDINGS]
    for earlier in stale:
        earlier.write_text("an earlier run")
    (tmp_path / "out" / "mine.txt").write_text("not the demo's")
    run = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Warning" not in run.stdout + run.stderr  # nothing a user should worry about
    out = run.stdout
    assert "PostgreSQL: embedded" in out
    sections = out.split("=== ")[1:]
    assert len(sections) == 2
    for section in sections:
        fixes = re.search(r"^Fixes\s+(\d+) read, (\d+) used", section, re.M)
        path = re.search(r"^Path\s+([\d.]+) km", section, re.M)
        trips = re.search(r"^Trips\s+(\d+)", section, re.M)
        saved = re.search(
            r"^Saved\s+(\S+\.csv), (\S+\.summary\.json) and (\S+\.report\.html)$", section, re.M
        )
        assert fixes, section
        assert path, section
        assert trips, section
        assert saved, section
        assert "X-Amz-Signature=" in section
        assert re.search(
            r"^Report\s+http://127\.0\.0\.1:\d+/jobs/[0-9a-f-]{36}/report$", section, re.M
        )
        with open(saved.group(1), newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == int(fixes.group(1))
        kept = [r for r in rows if not r["dropped_by"]]
        assert len(kept) == int(fixes.group(2))
        assert abs(sum(float(r["segment_km"]) for r in kept) - float(path.group(1))) < 0.01
        assert len({r["trip"] for r in rows if r["trip"]}) == int(trips.group(1))
        assert json.loads(Path(saved.group(2)).read_text())["points"]["read"] == int(fixes[1])
        report = Path(saved.group(3)).read_text()
        assert f"{int(fixes.group(1)):,}" in report
        # It opens offline: the map's script and style are inside, nothing links to status.
        assert "../../assets/" not in report
        assert "Leaflet 1.9.4" in report
        # The saved report links to the files saved beside it.
        links = re.findall(r'<a id="(?:csv|summary)" href="([^"]+)"', report)
        assert links
        for link in links:
            assert (Path(saved.group(3)).parent / link).exists(), link
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["mine.txt", *(name for section in sections for name in _saved(section))]
    )
    # The links it printed die with the stack: it says so, and how to keep them.
    assert re.search(r"no longer answer\n.*otel-worker demo --keep", out), out[-600:]
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""


def test_a_database_url_that_does_not_answer_is_said_before_the_fallback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/owntracks")
    said = io.StringIO()
    options = demo.Options(data_dir=tmp_path / "data", out_dir=tmp_path / "out")
    assert demo.running_server(options, said) is None
    assert said.getvalue().startswith(
        f"PostgreSQL: DATABASE_URL at 127.0.0.1:{port} does not answer ("
    )
    assert "Connection refused" in said.getvalue()
    assert said.getvalue().endswith("falling back to an embedded server\n")


def test_a_server_that_answers_is_used(
    postgres: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres.url)
    said = io.StringIO()
    options = demo.Options(data_dir=tmp_path / "data", out_dir=tmp_path / "out")
    assert demo.running_server(options, said) == postgres.url
    assert said.getvalue() == ""
    embedded = demo.Options(data_dir=tmp_path, out_dir=tmp_path, embedded=True)
    assert demo.running_server(embedded, said) is None


def test_demo_keep_serves_its_links_until_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    process = subprocess.Popen(
        _command(tmp_path, "--keep"),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("press Ctrl-C"):
                break
        out = "".join(lines)
        assert "still running (--keep): the Report and CSV links above work" in out, out
        reports = re.findall(r"^Report\s+(\S+)$", out, re.M)
        assert len(reports) == 2
        for report in reports:
            with urllib.request.urlopen(report, timeout=10) as page:
                assert page.status == 200
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    assert "everything it started is stopped" in rest
    assert "no longer answer" not in rest  # that note is for a run without --keep
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(reports[0], timeout=5)
