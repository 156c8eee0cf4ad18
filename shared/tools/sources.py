"""Readers of location files into `Points`, for `otel-worker analyze`.

Three formats:

- a CSV export of `public.locations` (header names = column names; `device_id`,
  `latitude`, `longitude` and `timestamp` required; `timestamp` and `created_at` as
  ISO-8601, with or without an offset (UTC when absent), or as epoch seconds);
- OwnTracks JSON: an array of objects or one object per line; `_type: location` objects
  are read (`lat`, `lon`, `tst`, `acc`, `vel`, `batt`, and the device from `device`,
  else `tid`), other types skipped;
- OwnTracks Recorder `.rec` files: `ISO-time<TAB>marker<TAB>JSON` per line, the JSON as
  above and the recorder's time as `created_at`.

A file that holds no location fix at all (an empty file, a CSV with only its header, JSON
or a `.rec` file without a `_type: location` object) is not location data: `SourceError`
names the file and what is missing, rather than an empty day being analysed.

Columns are converted by numpy in bulk; only when that fails is the file walked again to
find the first bad line, so a malformed file raises `SourceError` naming the line and the
problem while good files never pay for the walk.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.engine.points import MISSING, MISSING_TIME, US_PER_S, Points
from shared.errors import OtelWorkerError

_EPOCH_PATTERN = re.compile(r"^\s*-?\d+(\.\d*)?\s*$")
_ISO_PATTERN = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)?$"
)
_REQUIRED_CSV = ("device_id", "latitude", "longitude", "timestamp")


class SourceError(OtelWorkerError, ValueError):
    """A file cannot be read; the message names the file, the line and the problem."""


def read_file(path: Path, device: str | None = None) -> Points:
    """Read a location file by its content (see `read_batches`) into one `Points`: the
    fixes of a file that names no device are named `device`, else the file's stem."""
    from shared.tools import formats

    points = formats.concat(read_batches(path, device or _stem(path)))
    if not len(points):
        raise SourceError(f"{path}: no location fixes with a time and a position")
    return points


def read_batches(
    path: Path, device: str | None, skipped: Counter[str] | None = None
) -> Iterator[Points]:
    """A location file's fixes as `Points` batches, the file opened once and its format told
    by its content (gzip-compressed or not): GPX, GeoJSON and Google Takeout streamed by
    `formats` in batches (fixes whose file names no device are named `device`; when it is
    None they raise `SourceError`; `skipped` counts records passed over), a locations CSV,
    OwnTracks JSON or Recorder `.rec` file as one batch."""
    from shared.tools import formats

    with formats.open_source(path) as (kind, stream):
        if kind in formats.FORMATS:
            yield from formats.stream_batches(kind, stream, path, device, skipped)
            return
        try:
            # utf-8-sig: exports from spreadsheet tools often start with a byte-order mark.
            text = stream.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    yield read_text(text, path)


def read_text(text: str, path: Path) -> Points:
    """A locations CSV, OwnTracks JSON or Recorder `.rec` file's text (`path` names it)."""
    if not text.strip():
        raise SourceError(
            f"{path}: empty file; expected a locations CSV, OwnTracks JSON or a Recorder .rec file"
        )
    head = text.lstrip()[:1]
    if path.name.removesuffix(".gz").endswith(".rec") or re.match(
        r"^\d{4}-\d{2}-\d{2}T[^\t\n]*\t", text
    ):
        return read_recorder(text, path)
    if head in ("[", "{"):
        return read_owntracks_json(text, path)
    return read_locations_csv(text, path)


def _stem(path: Path) -> str:
    """A file's name without its extensions (`Records.json.gz` -> `Records`)."""
    return Path(path.name.removesuffix(".gz")).stem


def _fail(path: Path, line: int | str, problem: str) -> SourceError:
    """The error for a bad record: `line` is its line number, or a label saying where it is."""
    where = f"line {line}" if isinstance(line, int) else line
    return SourceError(f"{path}, {where}: {problem}")


def _first_bad(values: Sequence[Any], good: Callable[[Any], bool]) -> int:
    """Index of the first value `good` rejects (called only once bulk conversion failed)."""
    return next(k for k, value in enumerate(values) if not good(value))


def _is_number(value: Any, finite: bool = True) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(number)) or not finite


def _numbers(
    values: Sequence[Any], name: str, path: Path, lines: Sequence[int | str], *, finite: bool = True
) -> npt.NDArray[np.float64]:
    """Values as float64, or SourceError naming the first value that is not a number (not a
    finite one, unless `finite` is False)."""
    try:
        array = np.array(values, dtype=np.float64)
        # numpy reads JSON's true/false as 1/0: they are not numbers here.
        if (np.isfinite(array).all() or not finite) and bool not in set(map(type, values)):
            return array
    except (TypeError, ValueError):
        pass
    k = _first_bad(values, lambda value: _is_number(value, finite))
    raise _fail(path, lines[k], f"{name} {values[k]!r} is not a number")


def _coordinates(
    values: Sequence[Any], name: str, path: Path, lines: Sequence[int | str]
) -> npt.NDArray[np.float64]:
    """Latitudes or longitudes. NaN and infinities are numbers here: the engine drops them by
    its `invalid` rule and counts them, as it does for the same rows read from PostgreSQL."""
    return _numbers(values, name, path, lines, finite=False)


def _optional_ints(
    values: Sequence[Any], name: str, path: Path, lines: Sequence[int | str]
) -> npt.NDArray[np.int32]:
    """Integers where present, MISSING where empty or null."""
    filled = [MISSING if value in ("", None) else value for value in values]
    return np.rint(_numbers(filled, name, path, lines)).astype(np.int32)


def _times(
    values: Sequence[str], name: str, path: Path, lines: Sequence[int | str]
) -> npt.NDArray[np.int64]:
    """ISO-8601 times (UTC when they carry no offset) or epoch seconds, as µs since the epoch."""
    utc = _utc_times(values)
    if utc is not None:
        return utc
    text = np.strings.strip(np.array(values, dtype=np.str_))
    # Epoch seconds, before 1970 too: digits with at most one '.', after at most one '-'.
    unsigned = np.where(np.strings.startswith(text, "-"), np.strings.slice(text, 1, None), text)
    epoch = np.strings.isdigit(np.strings.replace(unsigned, ".", "", 1))
    times = np.zeros(len(text), dtype=np.int64)
    times[epoch] = np.rint(text[epoch].astype(np.float64) * US_PER_S).astype(np.int64)
    iso = np.flatnonzero(~epoch).tolist()
    if iso:
        # Labels are looked up only for the values that are not epoch numbers.
        where = lines if len(iso) == len(lines) else [lines[k] for k in iso]
        times[iso] = _iso_times(text[iso], name, path, where)
    return times


def _utc_times(values: Sequence[str]) -> npt.NDArray[np.int64] | None:
    """Times that all look like `2024-03-10T12:00:00[.fff]Z` (Takeout's and most exports'),
    parsed as bytes by numpy in one call; None when any does not, for `_times`' general path
    (which also names a bad one)."""
    try:
        raw = np.array(values, dtype=np.bytes_)
    except (UnicodeEncodeError, TypeError, ValueError):
        return None
    if raw.ndim != 1 or not raw.size or raw.dtype.itemsize < 17:
        return None
    grid = raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize)
    last = np.strings.str_len(raw) - 1
    rows = np.arange(len(raw))
    date_time = np.isin(grid[:, 10], (ord("T"), ord(" ")))
    offset = (grid[:, 11:] == ord("+")) | (grid[:, 11:] == ord("-"))
    if (last < 16).any() or not (grid[rows, last] == ord("Z")).all() or not date_time.all():
        return None
    if offset.any():
        return None
    grid[rows, last] = 0  # the Z becomes padding: numpy reads the naive time, which is UTC
    try:
        times = raw.astype("datetime64[us]").astype(np.int64)
    except ValueError:
        return None
    return None if (times == MISSING_TIME).any() else times


def _iso_times(
    text: npt.NDArray[np.str_], name: str, path: Path, lines: Sequence[int | str]
) -> npt.NDArray[np.int64]:
    normal = np.strings.replace(text, " ", "T")
    normal = np.strings.replace(normal, "Z", "+00:00")
    sign_at = np.maximum(np.strings.rfind(normal, "+"), np.strings.rfind(normal, "-"))
    cut = np.where(sign_at > 10, sign_at, np.strings.str_len(normal))
    offset = np.strings.replace(np.strings.slice(normal, cut, None), ":", "")
    digits = np.strings.slice(offset, 1, None)
    try:
        # numpy parses the naive part; the offset is applied here, not by numpy (deprecated).
        base = np.strings.slice(normal, 0, cut).astype("datetime64[us]").astype(np.int64)
        width = np.strings.str_len(digits)
        if (base == MISSING_TIME).any() or not (
            (offset == "") | (np.strings.isdigit(digits) & ((width == 2) | (width == 4)))
        ).all():
            raise ValueError
    except ValueError:
        values = text.tolist()
        k = _first_bad(values, _is_time)
        raise _fail(
            path, lines[k], f"{name} {values[k]!r} is not an ISO-8601 time or epoch seconds"
        ) from None
    hours = np.strings.slice(digits, 0, 2)
    minutes = np.strings.slice(digits, 2, 4)
    offset_s = np.where(hours == "", "0", hours).astype(np.int64) * 3600
    offset_s += np.where(minutes == "", "0", minutes).astype(np.int64) * 60
    offset_s *= np.where(np.strings.startswith(offset, "-"), -1, 1)
    times: npt.NDArray[np.int64] = base - offset_s * US_PER_S
    return times


def _is_time(value: str) -> bool:
    return bool(_EPOCH_PATTERN.match(value) or _ISO_PATTERN.match(value.strip()))


def _build(
    path: Path,
    lines: Sequence[int | str],
    devices: Sequence[str],
    columns: dict[str, Any],
) -> Points:
    names, codes = np.unique(np.array(devices, dtype=np.str_), return_inverse=True)
    if any("\0" in name for name in names.tolist()):
        k = _first_bad(devices, lambda d: "\0" not in d)
        raise _fail(path, lines[k], "device id contains a NUL character")
    return Points.from_columns([str(name) for name in names], device=codes, **columns)


def read_locations_csv(text: str, path: Path) -> Points:
    """A CSV export of `public.locations`."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise _fail(path, 1, "empty file: expected a header row")
    header = [name.strip() for name in rows[0]]
    missing = [repr(name) for name in _REQUIRED_CSV if name not in header]
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        raise _fail(
            path,
            1,
            f"missing {noun} {', '.join(missing)} in the header "
            f"(a locations CSV needs {', '.join(_REQUIRED_CSV)})",
        )
    # Physical line of each row, which quoted newlines can push below its index.
    reader = csv.reader(io.StringIO(text))
    next(reader)
    body = rows[1:]
    ends = np.fromiter((reader.line_num for _ in reader), dtype=np.int64, count=len(body))
    lines = (np.concatenate(([1], ends[:-1])) + 1).tolist() if len(body) else []
    lengths = np.fromiter(map(len, body), dtype=np.int64, count=len(body))
    if not lengths.all():  # blank lines (a trailing newline too many) hold no row
        kept = np.flatnonzero(lengths).tolist()
        body, lines, lengths = [body[k] for k in kept], [lines[k] for k in kept], lengths[kept]
    if (lengths != len(header)).any():
        k = int(np.flatnonzero(lengths != len(header))[0])
        raise _fail(path, lines[k], f"{lengths[k]} fields, expected {len(header)} as in the header")
    if not body:
        raise SourceError(f"{path}: no location fixes: the header has no rows below it")
    columns = dict(zip(header, zip(*body, strict=True), strict=True))

    def column(name: str) -> Sequence[str]:
        return columns.get(name) or ("",) * len(body)

    created = column("created_at")
    has_created = np.array(created, dtype=np.str_) != ""
    created_at = np.full(len(body), MISSING_TIME, dtype=np.int64)
    if has_created.any():
        present = np.flatnonzero(has_created).tolist()
        created_at[present] = _times(
            [created[k] for k in present], "created_at", path, [lines[k] for k in present]
        )
    return _build(
        path,
        lines,
        columns["device_id"],
        {
            "timestamp": _times(columns["timestamp"], "timestamp", path, lines),
            "lat": _coordinates(columns["latitude"], "latitude", path, lines),
            "lon": _coordinates(columns["longitude"], "longitude", path, lines),
            "accuracy": _optional_ints(column("accuracy"), "accuracy", path, lines),
            "velocity": _optional_ints(column("velocity"), "velocity", path, lines),
            "battery": _optional_ints(column("battery"), "battery", path, lines),
            "created_at": created_at,
        },
    )


def _locations(
    items: Sequence[Any],
    lines: Sequence[int],
    path: Path,
    received: npt.NDArray[np.int64] | None = None,
) -> Points:
    """`_type: location` objects as Points; other message types are skipped. `received`
    (parallel to `items`) is when each arrived, used as created_at when given."""
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise _fail(path, lines[k], f"expected a JSON object, got {type(item).__name__}")
    keep = [k for k, item in enumerate(items) if item.get("_type") == "location"]
    if not keep:
        raise SourceError(f"{path}: no location fixes: {_what_was_found(items)}")
    found = [items[k] for k in keep]
    where = [lines[k] for k in keep]
    for name in ("lat", "lon", "tst"):
        missing = [k for k, item in enumerate(found) if name not in item]
        if missing:
            raise _fail(path, where[missing[0]], f"location without {name!r}")
    devices = [str(item.get("device") or item.get("tid") or _stem(path)) for item in found]
    tst = _numbers([item["tst"] for item in found], "tst", path, where)
    if received is not None:
        created_at = received[keep]
    else:
        created = [item.get("created_at") for item in found]
        created_at = np.full(len(found), MISSING_TIME, dtype=np.int64)
        present = [k for k, value in enumerate(created) if value is not None]
        seconds = _numbers(
            [created[k] for k in present], "created_at", path, [where[k] for k in present]
        )
        created_at[present] = np.rint(seconds * US_PER_S).astype(np.int64)
    return _build(
        path,
        where,
        devices,
        {
            "timestamp": np.rint(tst * US_PER_S).astype(np.int64),
            "lat": _coordinates([item["lat"] for item in found], "lat", path, where),
            "lon": _coordinates([item["lon"] for item in found], "lon", path, where),
            "accuracy": _optional_ints([item.get("acc") for item in found], "acc", path, where),
            "velocity": _optional_ints([item.get("vel") for item in found], "vel", path, where),
            "battery": _optional_ints([item.get("batt") for item in found], "batt", path, where),
            "created_at": created_at,
        },
    )


def _what_was_found(items: Sequence[dict[str, Any]]) -> str:
    """What a file without `_type: location` objects held instead, for the error message."""
    if not items:
        return "no JSON objects with _type 'location'"
    kinds: dict[str, int] = {}
    for item in items:
        kind = str(item.get("_type", "without _type"))
        kinds[kind] = kinds.get(kind, 0) + 1
    held = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    return f"{len(items)} JSON object(s) ({held}), none with _type 'location' (OwnTracks)"


def _json_lines(payloads: Sequence[str], lines: Sequence[int], path: Path) -> list[Any]:
    """Parse one JSON document per entry in a single call; on failure find the bad one."""
    try:
        parsed: list[Any] = json.loads("[" + ",".join(payloads) + "]")
        if len(parsed) == len(payloads):
            return parsed
    except json.JSONDecodeError:
        pass
    for payload, line in zip(payloads, lines, strict=True):
        try:
            json.loads(payload)
        except json.JSONDecodeError as exc:
            raise _fail(path, line, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    raise _fail(path, lines[0], "invalid JSON")  # pragma: no cover - every payload parsed alone


def read_owntracks_json(text: str, path: Path) -> Points:
    """OwnTracks JSON: one array of objects, or one object per line."""
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
        if not isinstance(items, list):
            raise _fail(path, 1, "expected a JSON array of objects")
        return _locations(items, _item_lines(text, len(items)), path)
    numbered = _numbered_lines(text)
    lines = [k for k, _ in numbered]
    items = _json_lines([line for _, line in numbered], lines, path)
    return _locations(items, lines, path)


def _item_lines(text: str, count: int) -> list[int]:
    """The line each element of a top-level JSON array starts on."""
    decoder = json.JSONDecoder()
    starts: list[int] = []
    at = text.index("[") + 1
    for _ in range(count):
        while text[at] in " \t\r\n,":
            at += 1
        starts.append(at)
        _, at = decoder.raw_decode(text, at)
    newlines = np.flatnonzero(np.frombuffer(text.encode(), dtype=np.uint8) == ord("\n"))
    # Byte offsets and str offsets differ for non-ASCII text; count lines on the str itself.
    if len(text.encode()) != len(text):
        return [text.count("\n", 0, start) + 1 for start in starts]
    found: list[int] = (np.searchsorted(newlines, np.array(starts, dtype=np.int64)) + 1).tolist()
    return found


def _numbered_lines(text: str) -> list[tuple[int, str]]:
    """The non-blank lines with their numbers. Split on newlines only: str.splitlines would
    also split at U+2028 and other separators JSON allows inside strings."""
    lines = text.split("\n")
    return [(k + 1, line.rstrip("\r")) for k, line in enumerate(lines) if line.strip()]


def read_recorder(text: str, path: Path) -> Points:
    """An OwnTracks Recorder `.rec` file."""
    numbered = _numbered_lines(text)
    fields = [line.split("\t", 2) for _, line in numbered]
    lines = [k for k, _ in numbered]
    for (line, _), parts in zip(numbered, fields, strict=True):
        if len(parts) != 3:
            raise _fail(path, line, "expected 'time<TAB>marker<TAB>JSON'")
    received = _times([parts[0] for parts in fields], "record time", path, lines)
    items = _json_lines([parts[2] for parts in fields], lines, path)
    return _locations(items, lines, path, received)
