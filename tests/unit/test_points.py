"""The columnar point container: sorted, typed, NULLs explicit, mistakes caught early."""

from __future__ import annotations

import numpy as np
import pytest

from shared.engine.points import MISSING, MISSING_TIME, Points


def _three() -> Points:
    return Points.from_columns(
        ["phone", "watch"],
        device=[1, 0, 0],
        timestamp=[5, 9, 3],
        lat=[1.0, 2.0, 3.0],
        lon=[4.0, 5.0, 6.0],
        accuracy=[10, 20, 30],
    )


def test_from_columns_sorts_by_device_then_time_and_fills_nulls() -> None:
    points = _three()
    assert points.device.tolist() == [0, 0, 1]
    assert points.timestamp.tolist() == [3, 9, 5]
    assert points.lat.tolist() == [3.0, 2.0, 1.0]
    assert points.accuracy.tolist() == [30, 20, 10]
    assert points.velocity.tolist() == [MISSING] * 3
    assert points.created_at.tolist() == [MISSING_TIME] * 3
    assert points.device.dtype == np.int32
    assert len(points) == 3


def test_take_keeps_order_and_devices() -> None:
    subset = _three().take(np.array([True, False, True]))
    assert subset.timestamp.tolist() == [3, 5]
    assert subset.device_ids == ("phone", "watch")


def test_empty_has_every_column() -> None:
    empty = Points.empty()
    assert len(empty) == 0
    assert empty.lat.dtype == np.float64


def test_mismatched_lengths_are_refused() -> None:
    good = _three()
    with pytest.raises(ValueError, match=r"Points.lat has 2 rows, expected 3"):
        Points(**{**good.__dict__, "lat": good.lat[:2]})


def test_wrong_dtype_is_refused() -> None:
    good = _three()
    with pytest.raises(TypeError, match=r"Points.timestamp must be a 1-D int64"):
        Points(**{**good.__dict__, "timestamp": good.timestamp.astype(np.float64)})


def test_device_index_outside_the_names_is_refused() -> None:
    with pytest.raises(ValueError, match="outside device_ids"):
        Points.from_columns(["only"], device=[0, 1], timestamp=[1, 2], lat=[0, 0], lon=[0, 0])


def test_required_columns_are_named() -> None:
    with pytest.raises(ValueError, match="'lat' is required"):
        Points.from_columns(["a"], device=[0], timestamp=[1], lon=[0.0])
