"""`otel-worker nightly` and `otel-worker refresh` as their CronJobs run them: through
PgBouncer to the seeded month of three phones, the real S3 server, and a real HTTP peer
standing in for the broker."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest

from shared import cli, events
from shared.config import AnalysisSettings, load
from shared.contracts import DaySummarized, headline
from shared.engine import analyze, day_window, read_range
from shared.locations import read_points
from shared.nightly import summary_event_id, yesterday
from tests.conftest import Database, RecordingServer, S3Server
from tests.stack import SEED

DAY = dt.date(2024, 3, 12)


@pytest.fixture
def broker() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


@pytest.fixture
def settings(
    monkeypatch: pytest.MonkeyPatch, seeded: Database, s3: S3Server, broker: RecordingServer
) -> str:
    """The CronJob's environment: a jobs schema of this test's own; returns it."""
    schema = f"nightly_{uuid.uuid4().hex[:8]}"
    bucket = f"nightly-{uuid.uuid4().hex[:8]}"
    s3.client().make_bucket(bucket)
    env = {
        "DATABASE_URL": seeded.url,
        "JOBS_SCHEMA": schema,
        "MINIO_ENDPOINT": s3.endpoint,
        "MINIO_ACCESS_KEY": s3.writer.access_key,
        "MINIO_SECRET_KEY": s3.writer.secret_key,
        "MINIO_BUCKET": bucket,
        "MINIO_CREATE_BUCKET": "false",
        "K_SINK": broker.url,
        "HOME_LATITUDE": str(SEED.home_latitude),
        "HOME_LONGITUDE": str(SEED.home_longitude),
        "HOME_TIMEZONE": SEED.timezone,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["migrate"]) == 0
    return schema


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def _kept(seeded: Database, schema: str, day: dt.date) -> list[tuple[str, dt.datetime]]:
    with seeded.connect() as conn:
        rows = conn.execute(
            f"SELECT device_id, computed_at FROM {schema}.day_results WHERE day = %s ORDER BY 1",
            (day,),
        )
        return rows.fetchall()


def test_nightly_twice_for_one_day_keeps_one_result_and_sends_one_event_per_device(
    settings: str, seeded: Database, broker: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "nightly", "--day", f"{DAY}")
    assert code == 0, out
    assert "3 device(s) reported" in out
    sent = [(r["headers"]["ce-type"], r["headers"]["ce-id"], r["body"]) for r in broker.received]
    assert [kind for kind, _, _ in sent] == [events.DAY_SUMMARIZED] * 3
    data = [DaySummarized.model_validate_json(body) for _, _, body in sent]
    assert [d.device_id for d in data] == ["phone1", "phone2", "phone3"]
    assert {(d.day, d.timezone) for d in data} == {(DAY, SEED.timezone)}
    kept = _kept(seeded, settings, DAY)
    assert [device for device, _ in kept] == ["phone1", "phone2", "phone3"]
    # The figures are the engine's over that day of that device.
    params = load(AnalysisSettings).engine_params()
    window = day_window(DAY, DAY, SEED.timezone)
    lo, hi = read_range(window, params)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    with seeded.connect() as conn:
        points = read_points(
            conn, epoch + dt.timedelta(microseconds=lo), epoch + dt.timedelta(microseconds=hi), None
        )
    summary = analyze(points, window, params).summary.model_dump(mode="json")
    assert {d.device_id: d.figures for d in data} == {
        device: headline(metrics) for device, metrics in summary["devices"].items()
    }
    # Run again (a retried CronJob Job): the same kept results, no event sent again.
    broker.received.clear()
    code, out = _run(capsys, "nightly", "--day", f"{DAY}")
    assert code == 0
    assert "computed 0 device-day(s)" in out
    assert "published day.summarized for 0 device(s)" in out
    assert broker.received == []
    assert _kept(seeded, settings, DAY) == kept
    with seeded.connect() as conn:
        ids = conn.execute(
            f"SELECT event_id FROM {settings}.day_summaries WHERE day = %s ORDER BY device_id",
            (DAY,),
        ).fetchall()
    assert [row[0] for row in ids] == [event_id for _, event_id, _ in sent]


def test_nightly_for_a_day_no_device_reported_computes_and_sends_nothing(
    settings: str, seeded: Database, broker: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = SEED.start + dt.timedelta(days=SEED.days + 3)
    code, out = _run(capsys, "nightly", "--day", f"{quiet}")
    assert code == 0
    assert out == f"{quiet}: no device reported; nothing computed, nothing published\n"
    assert broker.received == []
    with seeded.connect() as conn:
        assert conn.execute(f"SELECT count(*) FROM {settings}.day_results").fetchone() == (0,)


def test_nightly_exits_1_when_the_broker_refuses_and_sends_next_time(
    settings: str, broker: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    broker.default = (400, {}, b"no")
    code, out = _run(capsys, "nightly", "--day", f"{DAY}")
    assert code == 1
    assert out.count("could not publish for phone") == 3
    broker.default = (202, {}, b"")
    broker.received.clear()
    code, out = _run(capsys, "nightly", "--day", f"{DAY}")
    assert code == 0
    assert "published day.summarized for 3 device(s)" in out
    assert len(broker.received) == 3


def test_refresh_reports_what_it_checked(
    settings: str, broker: RecordingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(capsys, "refresh")
    assert code == 0
    assert out.startswith("checked 0 kept device-day(s) since ")
    assert "0 superseded" in out
    assert broker.received == []


def test_yesterday_is_the_local_day_before_today() -> None:
    late_evening = dt.datetime(2024, 3, 10, 4, 30, tzinfo=dt.UTC)  # 23:30 on the 9th in NY
    assert yesterday("America/New_York", late_evening) == dt.date(2024, 3, 8)
    assert yesterday("UTC", late_evening) == dt.date(2024, 3, 9)


def test_a_day_summary_event_id_changes_with_the_rows_and_the_settings() -> None:
    one = summary_event_id("phone1", DAY, "k1", "f1")
    assert one == summary_event_id("phone1", DAY, "k1", "f1")
    assert len({one, summary_event_id("phone1", DAY, "k1", "f2")}) == 2
    assert len({one, summary_event_id("phone1", DAY, "k2", "f1")}) == 2
    assert one.startswith("2024-03-12.phone1.")
