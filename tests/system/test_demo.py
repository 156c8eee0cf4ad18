"""`otel-worker demo` (what `make demo` runs), end to end in a temporary folder on the
embedded PostgreSQL: its printed summaries match the CSVs it saved, and it leaves nothing
running."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared import config
from shared.dev import demo
from shared.dev.stack import free_ports
from tests.conftest import Database


def test_the_demo_prints_summaries_that_match_its_csvs_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    command = [
        str(Path(sys.executable).parent / "otel-worker"),
        "demo",
        "--embedded-postgres",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "out"),
    ]
    # A `.env` where it is started (a copy of .env.example, say) does not reach its services:
    # the demo runs on the defaults (this one would refuse the one-day job).
    (tmp_path / ".env").write_text("MAX_CSV_ROWS=1000\n")
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
        saved = re.search(r"^Saved\s+(\S+\.csv) and (\S+\.html)", section, re.M)
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
        report = Path(saved.group(2)).read_text()
        assert f"{int(fixes.group(1)):,}" in report
        # The saved report links to the files saved beside it.
        links = re.findall(r'<a id="(?:csv|summary)" href="([^"]+)"', report)
        assert links
        for link in links:
            assert (Path(saved.group(2)).parent / link).exists(), link
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
