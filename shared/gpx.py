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

from shared import export
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


_BREAK: Final = "</trkseg>\n<trkseg>\n"


def _points(analysis: Analysis, rows: npt.NDArray[np.intp], gaps: npt.NDArray[np.bool_]) -> bytes:
    """`<trkpt>` lines for `rows`, each column rendered for all rows at once as in `export`;
    a row where `gaps` holds starts a new segment. Parts a row does not have (an accuracy,
    a speed, the segment break) are blanked to NUL and dropped with the padding."""
    points = analysis.points
    lon = points.lon[rows]
    # The schema's longitude excludes +180, which is the same meridian as -180.
    lon = np.where(lon >= 180.0, lon - 360.0, lon)
    stamps = points.timestamp[rows]
    utc = export.render_timestamps(
        stamps, np.zeros(len(rows), np.int64), bool((stamps % US_PER_S).any())
    )
    accuracy = points.accuracy[rows]
    velocity = points.velocity[rows]
    no_accuracy, no_speed = accuracy == MISSING, velocity == MISSING
    no_extensions = no_accuracy & no_speed
    parts: list[tuple[export.Bytes | str, npt.NDArray[np.bool_] | None]] = [
        (_BREAK, ~gaps),
        ('<trkpt lat="', None),
        (export.render_decimals(points.lat[rows], 7), None),
        ('" lon="', None),
        (export.render_decimals(lon, 7), None),
        ('"><time>', None),
        (utc[:, :-6], None),  # without its "+00:00": Z says UTC
        ("Z</time>", None),
        ("<extensions>", no_extensions),
        ("<otel:accuracy>", no_accuracy),
        (export.render_integers(accuracy), no_accuracy),
        ("</otel:accuracy>", no_accuracy),
        ("<otel:speed>", no_speed),
        (export.render_decimals(velocity / 3.6, 3), no_speed),
        ("</otel:speed>", no_speed),
        ("</extensions>", no_extensions),
        ("</trkpt>\n", None),
    ]
    out = export.join_columns([part for part, _ in parts], len(rows))
    at = 0
    for part, blank in parts:
        width = len(part) if isinstance(part, str) else part.shape[1]
        if blank is not None:
            out[blank, at : at + width] = 0
        at += width
    return out.tobytes().translate(None, b"\0")


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
        gaps = np.diff(points.timestamp[rows], prepend=points.timestamp[rows[0]]) > max_gap_us
        written += out.write(b"<trkseg>\n")
        for first in range(0, len(rows), export.BLOCK_ROWS):
            block = slice(first, first + export.BLOCK_ROWS)
            written += out.write(_points(analysis, rows[block], gaps[block]))
        written += out.write(b"</trkseg>\n</trk>\n")
    written += out.write(b"</gpx>\n")
    return written
