"""The accuracy targets of docs/ACCURACY.md, held on seeds the benchmark and the tuning never
used (7000-7049; the defaults were chosen on 1000-1049): a change that makes stays, arrival
times, phantom path, the moving path, the farthest point or the bounds worse fails.

Where a target is met, the test holds the target; where it is not (docs/ACCURACY.md says
which), it holds today's figure with a little slack, so that it cannot get worse unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.bench.bench_accuracy import SCENARIOS, Score, score

SEEDS = range(7000, 7050)
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@dataclass(frozen=True)
class Limits:
    """What one scenario must reach (None: not held)."""

    f1: float = 0.95
    time_error_min: float | None = 2.0
    """Median arrival and departure error."""
    phantom_km_per_h: float | None = 0.1
    moving_pct: float | None = 2.0
    farthest_pct: float | None = 0.5
    coverage: float = 0.95
    width_pct: float | None = 10.0
    precision: float = 0.95
    """No phantom stays (from drift, from traffic stops)."""


LIMITS = {
    "10 s, 5 m": Limits(),
    "30 s, 5 m": Limits(),
    "30 s, 30 m": Limits(),
    "2 min, 30 m": Limits(),
    "5 min, 30 m": Limits(f1=0.90, time_error_min=None, width_pct=None),
    # Reported, not a target: a short stop is one or two fixes.
    "15 min, 30 m": Limits(f1=0.80, time_error_min=None, width_pct=None),
    # Targets missed at 100 m: held at today's figures (phantom 0.26, moving 20 %, farthest
    # 2.3 %).
    "30 s, 100 m": Limits(
        f1=0.90,
        time_error_min=None,
        phantom_km_per_h=0.35,
        moving_pct=25.0,
        farthest_pct=3.0,
        width_pct=None,
    ),
    # Coverage 94 % on these seeds (98 % on the tuning seeds): held at 90 %.
    "30 s, heavy-tailed 15 m": Limits(coverage=0.90),
    "30 s, indoor drift": Limits(),
    "2 min, 6 h silent at rest": Limits(),
    "30 s, two places 150 m apart": Limits(),
}


@pytest.fixture(scope="module")
def scores() -> dict[str, Score]:
    return {name: score(BY_NAME[name], SEEDS) for name in LIMITS}


def test_every_scenario_is_held() -> None:
    assert set(LIMITS) == set(BY_NAME)


@pytest.mark.parametrize("name", list(LIMITS))
def test_the_benchmark_meets_its_targets(name: str, scores: dict[str, Score]) -> None:
    result, limits = scores[name], LIMITS[name]
    assert result.f1 >= limits.f1
    assert result.precision >= limits.precision
    if limits.time_error_min is not None:
        assert result.arrival_min <= limits.time_error_min
        assert result.departure_min <= limits.time_error_min
    if limits.phantom_km_per_h is not None:
        assert result.phantom_km_per_h <= limits.phantom_km_per_h
    if limits.moving_pct is not None:
        assert result.moving_error_pct <= limits.moving_pct
    if limits.farthest_pct is not None:
        assert result.farthest_error_pct <= limits.farthest_pct
    assert result.trip_f1 >= 0.95  # no phantom trips
    assert result.coverage >= limits.coverage
    if limits.width_pct is not None:
        assert result.width_pct <= limits.width_pct
