"""The gRPC result as a client reads it: stays, places and the timeline of a day."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.dev.tracks import TrackSpec, generate
from shared.engine import EngineParams, analyze, day_window
from shared.grpc_adapter import metrics_message
from shared.rpc.distance.v1 import distance_pb2 as pb


def test_stays_places_and_timeline_reach_the_grpc_metrics() -> None:
    spec = TrackSpec(days=1, devices=1, seed=4)
    params = EngineParams(home_latitude=spec.home_latitude, home_longitude=spec.home_longitude)
    window = day_window(spec.start, spec.start, spec.timezone)
    summary = analyze(generate(spec).points, window, params).summary
    message = metrics_message(summary.model_dump(mode="json"))
    # What a client receives: the bytes, parsed again.
    metrics = pb.Metrics.FromString(message.SerializeToString())
    assert [stay.id for stay in metrics.stays] == [stay.id for stay in summary.stays]
    first = metrics.stays[0]
    assert first.place == summary.stays[0].place
    assert first.start.ToDatetime(tzinfo=dt.UTC) == summary.stays[0].start
    assert first.fixes == summary.stays[0].fixes
    assert metrics.path_km_low == summary.path_km_low
    assert metrics.path_km_high == summary.path_km_high
    assert metrics.path_km_low < metrics.path_km < metrics.path_km_high
    assert [visit.place for visit in metrics.places] == [v.place for v in summary.places]
    assert sum(entry.duration_s for entry in metrics.timeline) == pytest.approx(86400, abs=1e-3)
    kinds = {entry.kind for entry in metrics.timeline}
    assert kinds <= {"stay", "move", "unknown"}
    moves = [entry for entry in metrics.timeline if entry.kind == "move"]
    assert moves
    assert all(entry.stay_id == 0 and entry.place == "" for entry in moves)
