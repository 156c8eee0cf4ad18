"""Streaming readers of location history from other tools: GPX, GeoJSON, Google Takeout.

Every reader walks its file once, record by record, and hands back `Points` in batches
(`read_batches`), so a file of any size is read in bounded memory: XML through expat (SAX
events, nothing kept but the current point), JSON through ijson's C parser. Gzip-compressed
files (`.gz`, or any file starting with gzip's magic bytes) are decompressed as they are
read. The format is told by the content (`sniff`), not by the file name.

Formats and what their fields become:

- **GPX 1.0 and 1.1**: `trkpt`, `rtept` and `wpt` with `lat`/`lon` and `time`; accuracy
  from an extension element named `accuracy` or `hacc` (metres), else `hdop` times 5 m (a
  nominal range error per unit of dilution); velocity from `speed` (GPX 1.0, or an
  extension such as Garmin's, m/s -> km/h); the device from a track's `device` extension
  (what `analyze --gpx` writes). A point without a time is skipped (counted).
- **GeoJSON**: `Point` features (time from `properties.time`, `timestamp` or `tst`) and
  `LineString`/`MultiLineString` features (times from `properties.coordTimes`, `times` or
  `timestamps`, one per coordinate); `accuracy`/`acc`, `velocity`/`vel`, `battery`/`batt`
  and `device_id`/`device` properties where present.
- **Google Takeout `Records.json`**: `locations[]` with `latitudeE7`/`longitudeE7`,
  `accuracy`, `velocity` (m/s -> km/h), `timestamp` (ISO-8601) or `timestampMs`; the device
  from `deviceTag`.
- **Google Timeline, exported on the phone**: `rawSignals[].position` (`LatLng`,
  `accuracyMeters`, `speedMetersPerSecond`, `timestamp`) when the file has them, else the
  points of `semanticSegments[].timelinePath` (`point` as `"lat°, lng°"` or `"geo:lat,lng"`,
  `time`, or on iOS `durationMinutesOffsetFromStartTime` after the segment's `startTime`).

Times are ISO-8601 (UTC when without offset) or epoch seconds (milliseconds when the
number is too large to be seconds). A malformed record raises `SourceError` naming its line
(GPX) or the byte offset near which it ends (JSON).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import io
import mmap
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final, Protocol
from xml.parsers import expat

import msgspec
import numpy as np
import numpy.typing as npt

from shared.engine.points import DTYPES, MISSING, Points
from shared.errors import OtelWorkerError
from shared.gpx import EXTENSIONS
from shared.tools.sources import (
    SourceError,
    _build,
    _coordinates,
    _optional_ints,
    _times,
)

BATCH_ROWS: Final = 200_000
"""Records converted to `Points` at a time: large enough for numpy to pay, small enough to
keep the reader's memory flat."""

BLOCK_BYTES: Final = 8 << 20
"""Bytes of a Records.json read and decoded at a time (about 45,000 records)."""

HDOP_METRES: Final = 5.0
"""Metres of horizontal accuracy per unit of GPX `hdop`, when no accuracy extension says more."""

_GZIP_MAGIC: Final = b"\x1f\x8b"
_SNIFF_BYTES: Final = 65_536
# A number of "seconds" beyond this (year 5138) is milliseconds.
_MS_THRESHOLD: Final = 1e11
_LATLNG = re.compile(r"^\s*(?:geo:)?\s*(-?[\d.]+)\s*°?\s*,\s*(-?[\d.]+)\s*°?\s*$")

Skipped = Counter[str]
"""Records a reader passed over, by reason (for `otel-worker import`'s summary)."""


@contextlib.contextmanager
def open_bytes(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed when it is gzip-compressed (told by its magic bytes).
    The file is opened once and never rewound, so a pipe (`<(gunzip -c …)`) reads too."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    with raw:
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw


def sniff(head: bytes) -> str:
    """The format of a file by its first bytes (after gunzip): `gpx`, `geojson`, `records`,
    `timeline`, `timeline-ios`, or `other` (a locations CSV, OwnTracks JSON or `.rec`)."""
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        return "gpx"
    if not text.startswith(("{", "[")):
        return "other"
    if re.search(r'"locations"\s*:\s*\[', text):
        return "records"
    if re.search(r'"(semanticSegments|rawSignals)"\s*:', text):
        return "timeline"
    if text.startswith("[") and re.search(r'"(timelinePath|visit|activity)"\s*:', text):
        return "timeline-ios"
    if re.search(r'"type"\s*:\s*"(FeatureCollection|Feature)"', text):
        return "geojson"
    return "other"


FORMATS: Final = ("gpx", "geojson", "records", "timeline", "timeline-ios")
"""The formats this module reads (`sniff`'s other answer is for `sources`)."""


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[tuple[str, _Counting]]:
    """The file opened once: its format (`sniff` of its first bytes) and a stream of all its
    bytes, those first ones included."""
    with open_bytes(path) as raw:
        try:
            head = raw.read(_SNIFF_BYTES)
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: cannot decompress: {exc}") from None
        yield sniff(head), _Counting(raw, head)


def read_batches(
    path: Path,
    device: str | None,
    skipped: Skipped | None = None,
    batch_rows: int = BATCH_ROWS,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[Points]:
    """The fixes of a GPX, GeoJSON or Takeout file as `Points` batches (see `stream_batches`)."""
    with open_source(path) as (kind, stream):
        yield from stream_batches(kind, stream, path, device, skipped, batch_rows, block_bytes)


def stream_batches(
    kind: str,
    stream: _Counting,
    path: Path,
    device: str | None,
    skipped: Skipped | None = None,
    batch_rows: int = BATCH_ROWS,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[Points]:
    """The fixes of an opened file of `kind` (one of `FORMATS`) as `Points` batches of at
    most `batch_rows` (each sorted, the batches in file order; a Records.json is decoded
    `block_bytes` at a time). `device` names the fixes
    whose file carries no device id; when it is None such a fix raises `SourceError`.
    `skipped` counts records passed over."""
    if kind not in FORMATS:
        raise SourceError(f"{path}: not GPX, GeoJSON or a Google Takeout file")
    rows = _Rows(path, "line" if kind == "gpx" else "byte", device)
    counts = skipped if skipped is not None else Counter()
    try:
        if kind == "records":
            yield from _takeout(stream, path, counts, rows, batch_rows, block_bytes)
            return
        for record in _READERS[kind](stream, path, counts):
            rows.add(*record)
            if len(rows) >= batch_rows:
                yield rows.flush()
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read: {exc}") from None
    if len(rows):
        yield rows.flush()


def concat(batches: Iterable[Points]) -> Points:
    """Batches (each with its own device ids) as one sorted `Points`; a single batch is
    returned as it is. The batches are copied as they arrive into column chunks of
    `_CHUNK_ROWS` rows in memory of their own, each given back to the system as soon as the
    result holds it, so the peak is about the result and one column more (small arrays
    freed by numpy stay with the allocator, which would make it twice the result)."""
    ids: dict[str, int] = {}
    chunks: dict[str, list[npt.NDArray[Any]]] = {name: [] for name in DTYPES}
    total = filled = 0
    only: Points | None = None
    for count, batch in enumerate(batches):
        only = batch if count == 0 else None
        codes = np.array([ids.setdefault(name, len(ids)) for name in batch.device_ids], np.int32)
        columns = {name: getattr(batch, name) for name in DTYPES}
        columns["device"] = codes[batch.device]
        at = 0
        while at < len(batch):
            if filled == _CHUNK_ROWS or not chunks["device"]:
                for name, dtype in DTYPES.items():
                    chunks[name].append(_chunk(dtype))
                filled = 0
            take = min(len(batch) - at, _CHUNK_ROWS - filled)
            for name, column in columns.items():
                chunks[name][-1][filled : filled + take] = column[at : at + take]
            filled, at, total = filled + take, at + take, total + take
    if only is not None:
        return only
    names = sorted(ids)
    rank = np.zeros(max(len(ids), 1), np.int32)
    rank[[ids[name] for name in names]] = np.arange(len(names), dtype=np.int32)
    joined: dict[str, npt.NDArray[Any]] = {}
    for name, dtype in DTYPES.items():
        joined[name] = np.empty(total, dtype)
        for k, chunk in enumerate(chunks.pop(name)):
            rows = joined[name][k * _CHUNK_ROWS : (k + 1) * _CHUNK_ROWS]
            rows[:] = chunk[: len(rows)]
    joined["device"] = rank[joined["device"]]
    return Points.from_columns(names, **joined)


_CHUNK_ROWS: Final = 1 << 20


def _chunk(dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """An empty column chunk in an anonymous mapping of its own: unmapped when let go."""
    return np.frombuffer(mmap.mmap(-1, _CHUNK_ROWS * dtype.itemsize), dtype)


# A record: (device or None, time as ISO text or epoch seconds text, lat, lon, accuracy,
# velocity, battery, where: the line or byte offset it ends at).
_Record = tuple[str | None, str, Any, Any, Any, Any, Any, int]


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Counting:
    """A binary stream that counts the bytes read through it, for error positions: `head`
    (bytes already taken from `stream`) is served first, and `position` starts at the file
    offset of the first byte served."""

    def __init__(self, stream: _Readable, head: bytes = b"", position: int = 0) -> None:
        self.stream, self.head = stream, head
        self.position = position

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data = self.head if size < 0 else self.head[:size]
            self.head = self.head[len(data) :]
            if size < 0 or len(data) < size:
                data += self.stream.read(size if size < 0 else size - len(data))
        else:
            data = self.stream.read(size)
        self.position += len(data)
        return data


class _Where(Sequence[str]):
    """Where each record of a batch is, as `_fail` puts it after the file name."""

    def __init__(self, unit: str, places: list[int]) -> None:
        self.unit, self.places = unit, places

    def __len__(self) -> int:
        return len(self.places)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):  # pragma: no cover - the column helpers index one by one
            return [self[j] for j in range(*k.indices(len(self)))]
        if self.unit == "line":
            return f"line {self.places[k]}"
        return f"the record ending near byte {self.places[k]}"


class _Rows:
    """The records of one batch, column by column."""

    def __init__(self, path: Path, unit: str, device: str | None) -> None:
        self.path, self.unit, self.device = path, unit, device
        # What the coordinate columns hold: degrees, or integers `divisor` times them.
        self.lat_name, self.lon_name, self.divisor = "latitude", "longitude", 1.0
        self.devices: list[str] = []
        self.times: list[str] = []
        self.lat: list[Any] = []
        self.lon: list[Any] = []
        self.acc: list[Any] = []
        self.vel: list[Any] = []
        self.batt: list[Any] = []
        self.where: list[int] = []
        self.columns: tuple[list[Any], ...] = (
            self.devices,
            self.times,
            self.lat,
            self.lon,
            self.acc,
            self.vel,
            self.batt,
            self.where,
        )

    def _clear(self) -> None:
        # In place: the Records.json reader holds on to these lists.
        for column in self.columns:
            column.clear()

    def __len__(self) -> int:
        return len(self.where)

    def add(
        self,
        device: str | None,
        time: str,
        lat: Any,
        lon: Any,
        acc: Any,
        vel: Any,
        batt: Any,
        where: int,
    ) -> None:
        if device is None:
            if self.device is None:
                raise SourceError(f"{self.path}: the file names no device; give one with --device")
            device = self.device
        self.devices.append(device)
        self.times.append(time)
        self.lat.append(lat)
        self.lon.append(lon)
        self.acc.append(acc)
        self.vel.append(vel)
        self.batt.append(batt)
        self.where.append(where)

    def flush(self) -> Points:
        path, where = self.path, _Where(self.unit, self.where)
        points = _build(
            path,
            where,
            self.devices,
            {
                "timestamp": _times(self.times, "time", path, where),
                "lat": _coordinates(self.lat, self.lat_name, path, where) / self.divisor,
                "lon": _coordinates(self.lon, self.lon_name, path, where) / self.divisor,
                "accuracy": _optional_ints(self.acc, "accuracy", path, where),
                "velocity": _optional_ints(self.vel, "velocity", path, where),
                "battery": _optional_ints(self.batt, "battery", path, where),
            },
        )
        self._clear()
        return points


def _epoch_text(value: Any) -> str:
    """A time value as `_times` reads it: ISO text as is, numbers as epoch seconds."""
    if isinstance(value, str):
        text = value.strip()
        if not text.replace(".", "", 1).isdigit():
            return text
        value = float(text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000 if value > _MS_THRESHOLD else value
        return repr(float(seconds))
    return str(value)


def _kmh(metres_per_second: Any) -> Any:
    if isinstance(metres_per_second, (int, float)) and not isinstance(metres_per_second, bool):
        return metres_per_second * 3.6
    return metres_per_second


# --- GPX -------------------------------------------------------------------------------

_POINTS: Final = frozenset({"trkpt", "rtept", "wpt"})
_STAY: Final = f"{EXTENSIONS} stay"
"""The extension marking a waypoint as a stay `otel-worker` wrote (expat's namespaced name)."""


_FIELDS: Final = frozenset({"time", "hdop", "speed", "accuracy", "hacc"})
"""The elements of a point whose text the reader keeps."""
_PARSE_BYTES: Final = 1 << 20


def _gpx(stream: _Counting, path: Path, skipped: Skipped) -> Iterator[_Record]:
    """GPX points through expat: SAX events, only the current point's fields kept. The
    handlers run once per element, so they keep their state in closure variables and look
    local names up in a dict rather than splitting each one."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    found: list[_Record] = []
    local_names: dict[str, str] = {}
    text: list[str] = []
    point: dict[str, Any] | None = None
    device: str | None = None
    root: str | None = None

    def local_of(name: str) -> str:
        local = local_names.get(name)
        if local is None:
            local = local_names[name] = name.rsplit(" ", 1)[-1]
        return local

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal point, device, root
        local = local_of(name)
        if root is None:
            root = local
            if local != "gpx":
                raise SourceError(f"{path}, line 1: an XML file whose root is <{local}>, not <gpx>")
        if local in _POINTS:
            point = {
                "lat": attributes.get("lat"),
                "lon": attributes.get("lon"),
                "line": parser.CurrentLineNumber,
            }
        elif local == "trk":
            device = None
        text.clear()

    def end(name: str) -> None:
        nonlocal point, device
        local = local_of(name)
        if point is None:
            if local == "device":
                device = "".join(text).strip()
        elif local in _FIELDS:
            value = "".join(text).strip()
            if local in ("accuracy", "hacc"):
                point["accuracy"] = _number(value, local, path, point["line"])
            else:
                point[local] = value
        elif name == _STAY:
            point["stay"] = True
        elif local in _POINTS:
            done, point = point, None
            found.extend(_gpx_point(done, local, device, path, skipped))
        text.clear()

    def refuse_entities(*_: Any) -> None:
        # An entity declaration is how billion-laughs documents start; GPX needs none.
        raise SourceError(f"{path}, line {parser.CurrentLineNumber}: XML entities are refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    parser.EntityDeclHandler = refuse_entities
    while True:
        chunk = stream.read(_PARSE_BYTES)
        try:
            parser.Parse(chunk, not chunk)
        except expat.ExpatError as exc:
            raise SourceError(
                f"{path}, line {exc.lineno}: invalid XML: {expat.ErrorString(exc.code)}"
            ) from None
        yield from found
        found.clear()
        if not chunk:
            return


def _gpx_point(
    point: dict[str, Any], local: str, device: str | None, path: Path, skipped: Skipped
) -> list[_Record]:
    """A finished `trkpt`, `rtept` or `wpt` as a record, or none when it is skipped."""
    line = point["line"]
    if point["lat"] is None or point["lon"] is None:
        raise SourceError(f"{path}, line {line}: <{local}> without lat and lon")
    if point.get("stay"):
        # A stay this project wrote beside the track: a summary of fixes, not one.
        skipped["GPX stay waypoints (a summary, not fixes)"] += 1
        return []
    if "time" not in point:
        skipped[f"GPX <{local}> without a time"] += 1
        return []
    accuracy = point.get("accuracy")
    if accuracy is None and "hdop" in point:
        accuracy = _number(point["hdop"], "hdop", path, line) * HDOP_METRES
    speed = point.get("speed")
    velocity = None if speed is None else _number(speed, "speed", path, line) * 3.6
    owner = device if local == "trkpt" else None
    return [(owner, point["time"], point["lat"], point["lon"], accuracy, velocity, None, line)]


def _number(value: Any, name: str, path: Path, line: int) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SourceError(f"{path}, line {line}: {name} {value!r} is not a number") from None
    return number


# --- JSON ------------------------------------------------------------------------------


def _items(stream: _Counting, path: Path, prefix: str, buf_size: int = 1 << 20) -> Iterator[Any]:
    """The objects at `prefix`, streamed; invalid JSON names the byte offset reached (the
    end of the `buf_size` bytes being parsed: 1 MB parses about 15 % faster than ijson's
    64 kB default, a small one names a bad record more closely)."""
    import ijson

    try:
        yield from ijson.items(stream, prefix, use_float=True, buf_size=buf_size)
    except ijson.JSONError as exc:
        message = str(exc).splitlines()[0] if str(exc) else "invalid JSON"
        raise SourceError(f"{path}: invalid JSON near byte {stream.position}: {message}") from None


def _object(item: Any, path: Path, stream: _Counting, what: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise SourceError(
            f"{path}, the record ending near byte {stream.position}: "
            f"expected a JSON object in {what}, got {type(item).__name__}"
        )
    return item


def _records(
    stream: _Counting, path: Path, skipped: Skipped, rows: _Rows, batch_rows: int, buf_size: int
) -> Iterator[None]:
    """Google Takeout `Records.json`, appended to `rows` column by column (the biggest
    files come in this format, so no tuple is made per record); yields when a batch is full.
    Coordinates stay E7 integers here, checked and divided by numpy in `_Rows.flush`."""
    rows.lat_name, rows.lon_name, rows.divisor = "latitudeE7", "longitudeE7", 1e7
    devices, times, lat, lon = rows.devices, rows.times, rows.lat, rows.lon
    acc, vel, batt, where = rows.acc, rows.vel, rows.batt, rows.where
    fallback = rows.device
    for item in _items(stream, path, "locations.item", buf_size):
        record = _object(item, path, stream, "locations")
        if "latitudeE7" not in record or "longitudeE7" not in record:
            skipped["Takeout record without latitudeE7/longitudeE7"] += 1
            continue
        time = record.get("timestamp")
        if time is None:
            if "timestampMs" not in record:
                skipped["Takeout record without a timestamp"] += 1
                continue
            milliseconds = record["timestampMs"]
            try:
                time = _epoch_text(float(milliseconds) / 1000)
            except (TypeError, ValueError):
                raise SourceError(
                    f"{path}, the record ending near byte {stream.position}: "
                    f"timestampMs {milliseconds!r} is not a number"
                ) from None
        tag = record.get("deviceTag")
        if tag is None:
            if fallback is None:
                raise SourceError(f"{path}: the file names no device; give one with --device")
            devices.append(fallback)
        else:
            devices.append(str(tag))
        times.append(time)
        lat.append(record["latitudeE7"])
        lon.append(record["longitudeE7"])
        acc.append(record.get("accuracy"))
        speed = record.get("velocity")
        vel.append(None if speed is None else _kmh(speed))
        batt.append(None)
        where.append(stream.position)
        if len(where) >= batch_rows:
            yield


# --- Google Takeout Records.json ----------------------------------------------------------


class _Location(msgspec.Struct, rename="camel", gc=False):
    """The fields of a Takeout `locations[]` record this reader uses (the others, such as
    `activity`, are skipped by the decoder without being built)."""

    latitude_e7: int | float | msgspec.UnsetType = msgspec.UNSET
    longitude_e7: int | float | msgspec.UnsetType = msgspec.UNSET
    accuracy: int | float | msgspec.UnsetType | None = msgspec.UNSET
    velocity: int | float | msgspec.UnsetType | None = msgspec.UNSET
    timestamp: str | msgspec.UnsetType | None = msgspec.UNSET
    timestamp_ms: str | int | msgspec.UnsetType | None = msgspec.UNSET
    device_tag: int | str | msgspec.UnsetType | None = msgspec.UNSET


_LOCATIONS: Final = msgspec.json.Decoder(list[_Location])
_TAKEOUT_HEAD: Final = re.compile(rb'(?:\xef\xbb\xbf)?\s*\{\s*"locations"\s*:\s*\[\s*')
_TAKEOUT_PREFIX: Final = b'{"locations": ['
_REPLAY_BUFFER: Final = 4096
"""ijson's buffer when a piece is read again: a bad record is named within this many bytes."""
_MAX_PIECE_BYTES: Final = 64 << 20
"""A run of bytes this long without a record's end is left to the streaming parser."""


class _Unplaced(OtelWorkerError):
    """A piece the fast path does not read exactly as the record-by-record path would."""


class _Unfixed(_Unplaced):
    """A piece with records that are not fixes: read again without them."""


def _takeout(
    stream: _Counting, path: Path, skipped: Skipped, rows: _Rows, batch_rows: int, block: int
) -> Iterator[Points]:
    """Google Takeout `Records.json` in pieces of whole records: each piece is decoded by
    msgspec into a list of small structs and turned into columns by numpy. A piece that is
    not plain (a record without coordinates or time, a value of an unexpected type) is read
    again record by record (`_takeout_records`), which counts, converts or names the bad
    record exactly as before; bytes that do not look like Takeout's layout at all (another
    key beside `locations`, a record larger than `_MAX_PIECE_BYTES`, invalid JSON) go to that
    streaming parser for the rest of the file."""
    buf = stream.read(block)
    head = _TAKEOUT_HEAD.match(buf)
    if head is None:
        yield from _takeout_records(_Counting(stream, buf), path, skipped, rows, batch_rows)
        return
    at, buf = head.end(), buf[head.end() :]  # `at`: the file offset of buf[0]
    while True:
        more = stream.read(block)
        buf += more
        if more:
            cut = _records_end(buf)
            if not cut:
                if len(buf) < _MAX_PIECE_BYTES:
                    continue
                break
            piece, rest = buf[:cut], buf[cut:].lstrip()[1:].lstrip()  # drop the ','
        else:
            tail = buf.rstrip()
            if not (tail.endswith(b"}") and tail[:-1].rstrip().endswith(b"]")):
                break
            piece, rest = tail[:-1].rstrip()[:-1], b""
        try:
            yield from _takeout_piece(piece, rows, batch_rows, skipped)
        except (msgspec.ValidationError, _Unplaced):
            yield from _replay(piece, at, path, skipped, rows, batch_rows)
        except msgspec.DecodeError:
            break
        if not more:
            return
        at += len(buf) - len(rest)
        buf = rest
    # Not the layout the fast path reads: record by record from here on, with exact offsets.
    again = _Counting(stream, _TAKEOUT_PREFIX + buf, at - len(_TAKEOUT_PREFIX))
    yield from _takeout_records(again, path, skipped, rows, batch_rows)


def _records_end(buf: bytes) -> int:
    """Just past the last `}` in `buf` that closes a top-level record and is followed by a
    comma, or 0. `buf` starts at a record, so that is the last `}` with as many `{` before
    it; a brace inside a string can fool this count, but then the piece does not decode
    (a piece that starts at a record and decodes as a JSON array ends at one's end)."""
    end = len(buf)
    depth = buf.count(b"{") - buf.count(b"}")
    while (k := buf.rfind(b"}", 0, end)) >= 0:
        depth -= buf.count(b"{", k + 1, end) - buf.count(b"}", k + 1, end)
        if depth == 0 and buf[k + 1 : k + 4096].lstrip()[:1] == b",":
            return k + 1
        depth += 1
        end = k
    return 0


def _takeout_piece(piece: bytes, rows: _Rows, batch_rows: int, skipped: Skipped) -> list[Points]:
    """The records of `piece` (whole records, comma-separated) as `Points` batches; raises
    `_Unplaced` when a record needs the record-by-record path. Records that are not fixes
    are left out and counted as that path counts them, once the whole piece is read."""
    found = _LOCATIONS.decode(b"[" + piece + b"]")
    counted: Skipped = Counter()
    try:
        batches = _takeout_batches(found, rows.device, batch_rows)
    except _Unfixed:
        found = _fixes_only(found, counted)
        batches = _takeout_batches(found, rows.device, batch_rows)
    skipped.update(counted)
    return batches


def _takeout_batches(found: list[_Location], fallback: str | None, batch_rows: int) -> list[Points]:
    return [
        _takeout_points(found[first : first + batch_rows], fallback)
        for first in range(0, len(found), batch_rows)
    ]


def _fixes_only(found: list[_Location], counted: Skipped) -> list[_Location]:
    """The records with coordinates and a time; the others counted by reason."""
    unset = msgspec.UNSET
    placed = [r for r in found if r.latitude_e7 is not unset and r.longitude_e7 is not unset]
    timed = [
        r
        for r in placed
        if (r.timestamp is not None and r.timestamp is not unset) or r.timestamp_ms is not unset
    ]
    for reason, count in (
        ("Takeout record without latitudeE7/longitudeE7", len(found) - len(placed)),
        ("Takeout record without a timestamp", len(placed) - len(timed)),
    ):
        if count:
            counted[reason] += count
    return timed


def _takeout_points(found: list[_Location], fallback: str | None) -> Points:
    columns = _takeout_columns(found)
    names, codes = _takeout_devices([r.device_tag for r in found], fallback)
    return Points.from_columns(names, device=codes, **columns)


class _Nowhere(Sequence[str]):
    """Where the records of a decoded piece are, which the fast path does not know: asking
    sends the piece to the record-by-record path, which names the record."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: Any) -> Any:
        raise _Unplaced


def _takeout_columns(found: list[_Location]) -> dict[str, Any]:
    """The columns of plain records: coordinates, time and the optional numbers."""
    try:
        lat = np.array([r.latitude_e7 for r in found], np.float64) / 1e7
        lon = np.array([r.longitude_e7 for r in found], np.float64) / 1e7
    except TypeError:  # a record without coordinates
        raise _Unfixed from None
    times: list[Any] = [r.timestamp for r in found]
    try:
        kinds = set(map(type, times))
        if kinds == {str}:
            timestamp = _times(times, "time", Path(), _Nowhere(len(times)))
        else:
            if str in kinds:  # records without a time, or both styles of time in one piece
                raise _Unfixed
            # timestampMs (all of a piece, as in older exports): digits of milliseconds.
            digits = [r.timestamp_ms for r in found]
            if msgspec.UNSET in digits:  # a record without any time
                raise _Unfixed
            milliseconds = np.array(digits).astype(np.int64)
            if ((milliseconds < 0) | (milliseconds > _MS_THRESHOLD * 1000)).any():
                raise _Unplaced
            timestamp = milliseconds * 1000
    except (SourceError, TypeError, ValueError, OverflowError):
        raise _Unplaced from None
    velocity = _present([r.velocity for r in found]) * 3.6
    return {
        "timestamp": timestamp,
        "lat": lat,
        "lon": lon,
        "accuracy": _rint(_present([r.accuracy for r in found])),
        "velocity": _rint(velocity),
    }


def _present(values: list[Any]) -> npt.NDArray[np.float64]:
    """Numbers as float64, NaN where absent or null."""
    kinds = set(map(type, values))
    if not kinds & {int, float}:  # a field the export does not have
        return np.full(len(values), np.nan)
    if kinds <= {int, float}:
        return np.array(values, np.float64)
    return np.array([np.nan if v is None or v is msgspec.UNSET else v for v in values])


def _rint(values: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    """Rounded to integers, MISSING where NaN; `_Unplaced` when one is infinite."""
    if np.isinf(values).any():
        raise _Unplaced
    return np.where(np.isnan(values), MISSING, np.rint(values)).astype(np.int32)


def _takeout_devices(
    tags: list[Any], fallback: str | None
) -> tuple[list[str], npt.NDArray[np.int32]]:
    """The device ids (sorted) and each record's code: its `deviceTag`, else `fallback`
    (when None, the other path says which record lacks a device)."""
    named = {t: fallback if t is None or t is msgspec.UNSET else str(t) for t in set(tags)}
    names = sorted({name for name in named.values() if name is not None})
    if None in named.values() or any("\0" in name for name in names):
        raise _Unplaced
    if len(names) == 1:
        return names, np.zeros(len(tags), np.int32)
    code = {tag: names.index(name) for tag, name in named.items() if name is not None}
    return names, np.array([code[tag] for tag in tags], np.int32)


def _replay(
    piece: bytes, at: int, path: Path, skipped: Skipped, rows: _Rows, batch_rows: int
) -> Iterator[Points]:
    """A piece read again record by record, its offsets those of the file."""
    again = _Counting(
        io.BytesIO(_TAKEOUT_PREFIX + piece + b"]}"), position=at - len(_TAKEOUT_PREFIX)
    )
    yield from _takeout_records(again, path, skipped, rows, batch_rows, _REPLAY_BUFFER)


def _takeout_records(
    stream: _Counting,
    path: Path,
    skipped: Skipped,
    rows: _Rows,
    batch_rows: int,
    buf_size: int = 1 << 20,
) -> Iterator[Points]:
    """Records.json record by record through ijson (see `_records`)."""
    for _ in _records(stream, path, skipped, rows, batch_rows, buf_size):
        yield rows.flush()
    if len(rows):
        yield rows.flush()


def _latlng(text: Any, path: Path, where: int) -> tuple[float, float]:
    match = _LATLNG.match(text) if isinstance(text, str) else None
    if match is None:
        raise SourceError(
            f"{path}, the record ending near byte {where}: {text!r} is not 'lat°, lng°'"
        )
    return float(match[1]), float(match[2])


def _timeline(stream: _Counting, path: Path, skipped: Skipped) -> Iterator[_Record]:
    """Google Timeline as the phone exports it: raw positions when there are any."""
    raw = 0
    for item in _items(stream, path, "rawSignals.item"):
        position = _object(item, path, stream, "rawSignals").get("position")
        if not isinstance(position, dict):
            continue  # a Wi-Fi scan or an activity record
        where = stream.position
        if "timestamp" not in position:
            skipped["Timeline position without a timestamp"] += 1
            continue
        lat, lon = _latlng(position.get("LatLng"), path, where)
        raw += 1
        yield (
            None,
            _epoch_text(position["timestamp"]),
            lat,
            lon,
            position.get("accuracyMeters"),
            _kmh(position.get("speedMetersPerSecond")),
            None,
            where,
        )
    if raw:
        return
    with open_bytes(path) as again:
        second = _Counting(again)
        for item in _items(second, path, "semanticSegments.item"):
            yield from _segment(_object(item, path, second, "semanticSegments"), path, second)


def _timeline_ios(stream: _Counting, path: Path, skipped: Skipped) -> Iterator[_Record]:
    """Google Timeline as iOS exports it: a top-level array of segments."""
    for item in _items(stream, path, "item"):
        yield from _segment(_object(item, path, stream, "the array"), path, stream)


def _segment(segment: dict[str, Any], path: Path, stream: _Counting) -> Iterator[_Record]:
    where = stream.position
    start: dt.datetime | None = None
    for step in segment.get("timelinePath") or ():
        if not isinstance(step, dict):
            continue
        lat, lon = _latlng(step.get("point"), path, where)
        time = step.get("time")
        if time is None and "durationMinutesOffsetFromStartTime" in step:
            if start is None:
                try:
                    start = dt.datetime.fromisoformat(str(segment.get("startTime")))
                except ValueError:
                    raise SourceError(
                        f"{path}, the record ending near byte {where}: startTime "
                        f"{segment.get('startTime')!r} is not an ISO-8601 time"
                    ) from None
            minutes = float(step["durationMinutesOffsetFromStartTime"])
            time = (start + dt.timedelta(minutes=minutes)).isoformat()
        if time is None:
            continue
        yield (None, _epoch_text(time), lat, lon, None, None, None, where)


_TIME_KEYS: Final = ("time", "timestamp", "tst")
_TIMES_KEYS: Final = ("coordTimes", "times", "timestamps")


def _geojson(stream: _Counting, path: Path, skipped: Skipped) -> Iterator[_Record]:
    """GeoJSON features (a FeatureCollection, or one Feature)."""
    prefix = "features.item"
    for item in _items(stream, path, prefix):
        feature = _object(item, path, stream, "features")
        where = stream.position
        geometry = feature.get("geometry") or {}
        properties = feature.get("properties") or {}
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        device = properties.get("device_id") or properties.get("device")
        extra = (
            properties.get("accuracy", properties.get("acc")),
            properties.get("velocity", properties.get("vel")),
            properties.get("battery", properties.get("batt")),
        )
        device = None if device is None else str(device)
        if kind == "Point":
            time = next((properties[k] for k in _TIME_KEYS if k in properties), None)
            if time is None:
                skipped["GeoJSON Point without a time"] += 1
                continue
            lon, lat = _position(geometry.get("coordinates"), path, where)
            yield (device, _epoch_text(time), lat, lon, *extra, where)
        elif kind in ("LineString", "MultiLineString"):
            times = next((properties[k] for k in _TIMES_KEYS if k in properties), None)
            lines = geometry.get("coordinates") or []
            if kind == "LineString":
                lines, times = [lines], [times]
            if times is None or any(t is None for t in times):
                skipped[f"GeoJSON {kind} without per-coordinate times"] += 1
                continue
            for line, line_times in zip(lines, times, strict=False):
                if not isinstance(line_times, list) or len(line_times) != len(line):
                    count = len(line_times) if isinstance(line_times, list) else "no"
                    raise SourceError(
                        f"{path}, the record ending near byte {where}: "
                        f"{len(line)} coordinates but {count} times"
                    )
                for coordinates, time in zip(line, line_times, strict=True):
                    lon, lat = _position(coordinates, path, where)
                    yield (device, _epoch_text(time), lat, lon, None, None, None, where)
        else:
            skipped[f"GeoJSON {kind or 'feature without geometry'}"] += 1


def _position(coordinates: Any, path: Path, where: int) -> tuple[Any, Any]:
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise SourceError(
            f"{path}, the record ending near byte {where}: coordinates {coordinates!r} "
            "are not [longitude, latitude]"
        )
    return coordinates[0], coordinates[1]


_READERS: Final[dict[str, Callable[[_Counting, Path, Skipped], Iterator[_Record]]]] = {
    "gpx": _gpx,
    "geojson": _geojson,
    "timeline": _timeline,
    "timeline-ios": _timeline_ios,
}
