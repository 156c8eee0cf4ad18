"""The `otel-worker` command line itself: help, version, settings, argument errors, pipes."""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import config
from shared.cli import build_parser, main

EXE = str(Path(sys.executable).parent / "otel-worker")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_bare_otel_worker_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert (code, err) == (0, "")
    assert out.startswith("usage: otel-worker")
    for command in ("analyze", "demo", "dev", "submit", "config"):
        assert f"    {command} " in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("otel-worker 0.")


def _every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    found = [("otel-worker", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [(f"otel-worker {name}", sub) for name, sub in action.choices.items()]
    return found


def test_every_option_and_command_has_help_text() -> None:
    parsers = _every_parser()
    assert len(parsers) > 10
    for name, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), name
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help not in (None, "", argparse.SUPPRESS), f"{name} {label}"


def test_config_without_a_group_prints_every_group(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "MINIO_ACCESS_KEY": "key",
        "MINIO_SECRET_KEY": "secret-value",
        "SUBMIT_URL": "http://127.0.0.1:1",
        "STATUS_URL": "http://127.0.0.1:2",
        "GRPC_ALLOW_UNAUTHENTICATED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    code, out, err = run(capsys, "config")
    assert (code, err) == (0, "")
    assert [line for line in out.splitlines() if line.startswith("[")] == [
        f"[{name}]" for name in sorted(config.GROUPS)
    ]
    assert "secret-value" not in out


def test_config_reports_an_invalid_group_and_still_prints_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "config")
    assert code == 2
    assert "[telemetry]\n  " in out  # the groups after the invalid one are printed too
    assert "otel-worker config: [storage] invalid configuration: MINIO_ACCESS_KEY" in err
    code, out, err = run(capsys, "config", "analysis")
    assert (code, err) == (0, "")
    assert out.startswith("[analysis]\n  HOME_LATITUDE = ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyze", "x.csv", "--date", "2024-02-30"], "'2024-02-30' is not a calendar date"),
        (["submit", "--date", "2023-13-01"], "'2023-13-01' is not a calendar date"),
        (["analyze", "x.csv", "--from", "12/03/2024"], "expected a date YYYY-MM-DD, got"),
        (["config", "nope"], "unknown group 'nope' (choose from admission, analysis,"),
        (["seed", "--interval-s", "0"], "expected a positive number of seconds, got '0'"),
    ],
)
def test_argument_errors_say_what_is_wrong(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2
    assert message in capsys.readouterr().err


def test_dev_help_says_it_needs_a_database(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["dev", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Needs a PostgreSQL server: DATABASE_URL" in text


def test_output_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    pipeline = f"'{EXE}' seed --csv /dev/stdout --days 7 --devices 2 | head -n 2"
    run = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.stderr == ""  # no BrokenPipeError traceback
    assert len(run.stdout.splitlines()) == 2
    assert run.returncode == 141  # as a command ended by SIGPIPE


def test_seed_takes_fractions_of_a_second_and_fills_tid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "fast.csv"
    code, _, err = run(capsys, "seed", "--csv", str(target), "--days", "1", "--interval-s", "0.25")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) > 4 * 86_000  # about four fixes a second for a day
    assert {row["tid"] for row in rows} == {"e1"}  # phone1, as OwnTracks derives it
    assert rows[1]["timestamp"].endswith(".250000+00:00")
