"""The columnar form of GPS fixes that readers produce and the distance engine consumes.

One numpy array per column, all the same length, sorted by (device, timestamp). Times are
int64 microseconds since the Unix epoch (UTC): exact, and what PostgreSQL's binary
timestamptz becomes after one vectorised offset. Nullable integer columns use -1 for NULL
(OwnTracks itself sends `vel: -1` for "unknown"), so no column needs a mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

MISSING = -1
"""NULL in the nullable integer columns (accuracy, velocity, battery)."""

MISSING_TIME = np.iinfo(np.int64).min
"""NULL in `created_at`."""

US_PER_S = 1_000_000


def tracker_id(device_id: str) -> str:
    """The `tid` OwnTracks gives a device by default: the last two characters of its id
    (a one-character id twice), so written rows carry one as the app's do."""
    return (device_id * 2)[-2:]


DTYPES: dict[str, np.dtype[Any]] = {
    "device": np.dtype(np.int32),
    "timestamp": np.dtype(np.int64),
    "lat": np.dtype(np.float64),
    "lon": np.dtype(np.float64),
    "accuracy": np.dtype(np.int32),
    "velocity": np.dtype(np.int32),
    "battery": np.dtype(np.int32),
    "created_at": np.dtype(np.int64),
}


@dataclass(frozen=True, eq=False)
class Points:
    """GPS fixes as parallel arrays; `device` holds indexes into `device_ids`."""

    device_ids: tuple[str, ...]
    device: npt.NDArray[np.int32]
    timestamp: npt.NDArray[np.int64]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.int32]
    velocity: npt.NDArray[np.int32]
    battery: npt.NDArray[np.int32]
    created_at: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        length = len(self.device)
        for name, dtype in DTYPES.items():
            column = getattr(self, name)
            if column.dtype != dtype or column.ndim != 1:
                raise TypeError(f"Points.{name} must be a 1-D {dtype} array, got {column.dtype}")
            if len(column) != length:
                raise ValueError(f"Points.{name} has {len(column)} rows, expected {length}")
        if length and (self.device.min() < 0 or self.device.max() >= len(self.device_ids)):
            raise ValueError("Points.device holds an index outside device_ids")

    def __len__(self) -> int:
        return len(self.device)

    @classmethod
    def empty(cls) -> Points:
        """No points at all."""
        return cls(device_ids=(), **{name: np.empty(0, dtype) for name, dtype in DTYPES.items()})

    @classmethod
    def from_columns(cls, device_ids: tuple[str, ...] | list[str], **columns: Any) -> Points:
        """Build from array-likes, casting each column to its dtype and sorting by device, time.

        Missing nullable columns are filled with NULL.
        """
        length = len(columns["timestamp"])
        arrays: dict[str, Any] = {}
        for name, dtype in DTYPES.items():
            if name in columns and columns[name] is not None:
                arrays[name] = np.asarray(columns[name]).astype(dtype, copy=False)
            elif name == "created_at":
                arrays[name] = np.full(length, MISSING_TIME, dtype)
            elif name in ("accuracy", "velocity", "battery"):
                arrays[name] = np.full(length, MISSING, dtype)
            else:
                raise ValueError(f"column {name!r} is required")
        order = np.lexsort((arrays["timestamp"], arrays["device"]))
        if not np.array_equal(order, np.arange(length)):
            arrays = {name: column[order] for name, column in arrays.items()}
        return cls(device_ids=tuple(device_ids), **arrays)

    def take(self, index: npt.NDArray[Any]) -> Points:
        """The subset at `index` (a boolean mask or integer positions), order kept."""
        return Points(
            device_ids=self.device_ids,
            **{name: getattr(self, name)[index] for name in DTYPES},
        )
