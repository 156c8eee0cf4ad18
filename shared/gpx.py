"""GPX 1.1 out: each device's kept fixes as a track, split into segments at gaps.

GPX is what every mapping and fitness tool reads. A document holds, in the order the schema
fixes, waypoints, routes and tracks; this writer emits one `<trk>` per device (its name and
an `otel:device` extension carrying the device id, which `otel-worker analyze` reads back),
with a new `<trkseg>` wherever two kept fixes are further apart in time than the engine's
gap limit (`max_gap_s`: the time it counts as unknown). Each `<trkpt>` has its time (UTC)
and, as `otel:` extensions, the fix's accuracy (m) and speed (m/s) when known. Points a
quality filter dropped are left out, as on the map.

Stays come first, as waypoints: at the stay's centre, timed at its arrival, named by its
place, with its departure and device as `otel:` extensions. The `otel:stay` extension
marks them, so `otel-worker analyze` reading the file back takes them for what they are
(a summary, not fixes).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import BinaryIO, Final
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt

from shared.engine import Analysis
from shared.engine.points import MISSING, US_PER_S

NAMESPACE: Final = "http://www.topografix.com/GPX/1/1"
EXTENSIONS: Final = "urn:otel-worker:gpx:1"
"""The namespace of this project's extension elements (`device`, `accuracy`, `speed`,
`stay`, `end`)."""
CREATOR: Final = "otel-worker"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value: str) -> str:
    """Text safe inside an XML element: escaped, characters XML 1.0 forbids replaced."""
    return escape(_NOT_XML.sub("\ufffd", value))


def _times(timestamp: npt.NDArray[np.int64]) -> list[str]:
    stamps = timestamp.astype("datetime64[us]")
    if (timestamp % US_PER_S).any():
        text = np.datetime_as_string(stamps, unit="us")
    else:
        text = np.datetime_as_string(stamps, unit="s")
    return [value + "Z" for value in text.tolist()]


def _segment(analysis: Analysis, rows: npt.NDArray[np.intp]) -> str:
    points = analysis.points
    lat = points.lat[rows].tolist()
    # The schema's longitude excludes +180, which is the same meridian as -180.
    lon = np.where(points.lon[rows] >= 180.0, points.lon[rows] - 360.0, points.lon[rows]).tolist()
    times = _times(points.timestamp[rows])
    accuracy = points.accuracy[rows].tolist()
    velocity = points.velocity[rows].tolist()
    parts = ["<trkseg>\n"]
    for k, time in enumerate(times):
        extra = ""
        if accuracy[k] != MISSING:
            extra += f"<otel:accuracy>{accuracy[k]}</otel:accuracy>"
        if velocity[k] != MISSING:
            extra += f"<otel:speed>{velocity[k] / 3.6:.3f}</otel:speed>"
        if extra:
            extra = f"<extensions>{extra}</extensions>"
        parts.append(
            f'<trkpt lat="{lat[k]:.7f}" lon="{lon[k]:.7f}"><time>{time}</time>{extra}</trkpt>\n'
        )
    parts.append("</trkseg>\n")
    return "".join(parts)


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stays(analysis: Analysis) -> str:
    """The stays as waypoints (a handful a day: no per-fix work here)."""
    parts = []
    for stay in analysis.summary.stays:
        place = _text(stay.place)
        device = _text(stay.device_id)
        minutes = round(stay.duration_s / 60)
        parts.append(
            f'<wpt lat="{stay.latitude:.7f}" lon="{stay.longitude:.7f}">'
            f"<time>{_utc(stay.start)}</time><name>{place}</name>"
            f"<desc>{device} at {place} for {minutes // 60}h{minutes % 60:02d}m</desc>"
            f"<type>stay</type><extensions><otel:stay>{stay.id}</otel:stay>"
            f"<otel:device>{device}</otel:device><otel:end>{_utc(stay.end)}</otel:end>"
            "</extensions></wpt>\n"
        )
    return "".join(parts)


def write_gpx(analysis: Analysis, out: BinaryIO | Path) -> int:
    """Write the analysis's stays (as waypoints) and tracks as a GPX 1.1 document; returns
    the bytes written."""
    if isinstance(out, Path):
        with out.open("wb") as stream:
            return write_gpx(analysis, stream)
    points = analysis.points
    max_gap_us = analysis.summary.parameters.max_gap_s * US_PER_S
    written = out.write(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<gpx version="1.1" creator="{CREATOR}" xmlns="{NAMESPACE}" '
        f'xmlns:otel="{EXTENSIONS}">\n'.encode()
    )
    written += out.write(_stays(analysis).encode())
    kept = analysis.dropped_by == 0
    for code, device_id in enumerate(points.device_ids):
        rows = np.flatnonzero(kept & (points.device == code))
        if not rows.size:
            continue
        name = _text(device_id)
        written += out.write(
            f"<trk><name>{name}</name>"
            f"<extensions><otel:device>{name}</otel:device></extensions>\n".encode()
        )
        gaps = np.flatnonzero(np.diff(points.timestamp[rows]) > max_gap_us) + 1
        for segment in np.split(rows, gaps):
            written += out.write(_segment(analysis, segment).encode())
        written += out.write(b"</trk>\n")
    written += out.write(b"</gpx>\n")
    return written
