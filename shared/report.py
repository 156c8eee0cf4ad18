"""The job report: an HTML page with inline SVG charts and a Leaflet map.

compute stores a compact `series` of each job (`series_of`, at most a few thousand points
per device, extremes kept); status renders it with the summary (`render`): the figures,
distance from home over time with the trips shaded and the home radii drawn, a map of each
device's track with home and its radii, the stays, the named places, the trips and the
farthest point, for a range a calendar of its days and a table of its months, each day's
timeline of stays and moves, the time per place, the trips table, and the download links.

The map's script and style (Leaflet, vendored at build time into `shared/static/leaflet`)
are linked from status's `/assets/` route (Flask keeps `/static/` for itself), or inlined
(`self_contained`) into a page that is saved to be opened later, offline. Tiles come from
`MAP_TILE_URL`; without them the map draws everything on a plain background with a scale
bar.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import math
import re
import statistics
from importlib import resources
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

if TYPE_CHECKING:
    import jinja2

from shared import config
from shared.engine import DROP_RULES, Analysis
from shared.engine.points import US_PER_S

MAX_POINTS = 1500
"""Points kept per device for the charts (each bucket keeps its nearest and farthest)."""
_SERIES: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
KM_PER_DEG = 6371.0088 * math.pi / 180


def _buckets(distance: npt.NDArray[np.float64], limit: int) -> npt.NDArray[np.int64]:
    """Indexes to keep of one device's fixes: all of them when few, else the nearest and
    farthest fix of each of `limit // 2` equal buckets, in time order."""
    n = len(distance)
    if n <= limit:
        return np.arange(n)
    edges = np.linspace(0, n, limit // 2 + 1).astype(np.int64)
    starts = edges[:-1]
    nearest = np.minimum.reduceat(distance, starts)
    farthest = np.maximum.reduceat(distance, starts)
    group = np.repeat(np.arange(len(starts)), np.diff(edges))
    is_near = distance == nearest[group]
    is_far = distance == farthest[group]
    # First occurrence of each extreme per bucket.
    first_near = np.unique(group[is_near], return_index=True)[1]
    first_far = np.unique(group[is_far], return_index=True)[1]
    keep = np.union1d(np.flatnonzero(is_near)[first_near], np.flatnonzero(is_far)[first_far])
    return keep.astype(np.int64)


def series_of(analysis: Analysis, limit: int = MAX_POINTS) -> dict[str, Any]:
    """The chart data of a job: per device, the observed fixes (kept or jitter) as time
    (s), distance from home (km), east/north of home (km) and trip id."""
    points = analysis.points
    params = analysis.summary.parameters
    jitter = 1 + DROP_RULES.index("jitter")
    observed = (analysis.dropped_by == 0) | (analysis.dropped_by == jitter)
    cos_home = math.cos(math.radians(params.home_latitude))
    devices = {}
    for code, device in enumerate(points.device_ids):
        rows = np.flatnonzero(observed & (points.device == code))
        keep = rows[_buckets(analysis.distance_km[rows], limit)]
        east = (points.lon[keep] - params.home_longitude) * KM_PER_DEG * cos_home
        north = (points.lat[keep] - params.home_latitude) * KM_PER_DEG
        devices[device] = {
            "t": (points.timestamp[keep] // US_PER_S).tolist(),
            "km": np.round(analysis.distance_km[keep], 4).tolist(),
            "east": np.round(east, 4).tolist(),
            "north": np.round(north, 4).tolist(),
            "trip": analysis.trip[keep].tolist(),
        }
    return {"version": 1, "devices": devices}


def series_json(analysis: Analysis, limit: int = MAX_POINTS) -> bytes:
    """`series_of` as JSON, serialised by pydantic in Rust: a sixth of `json.dumps`'s time
    for 1,500 points, paid by every job."""
    return _SERIES.dump_json(series_of(analysis, limit))


def summed_over(devices: int, before: str = "", after: str = "") -> str:
    """The words "summed over N devices", between `before` and `after`, when the times of
    several devices are added up (so 28 hours at home in one day reads as possible); empty
    for one device."""
    return f"{before}summed over {devices} devices{after}" if devices > 1 else ""


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _nice(value: float) -> float:
    """A round number at least `value` (1, 2, 2.5 or 5 times a power of ten)."""
    scale = 10 ** math.floor(math.log10(value)) if value > 0 else 1
    return next(m * scale for m in (1, 2, 2.5, 5, 10) if m * scale >= value)


def _time_chart(summary: dict[str, Any], series: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    """Coordinates of the distance-over-time chart."""
    width, height, left, right, top, bottom = 960, 300, 56, 16, 16, 36
    start = dt.datetime.fromisoformat(summary["window"]["start"]).timestamp()
    end = dt.datetime.fromisoformat(summary["window"]["end"]).timestamp()
    params = summary["parameters"]
    peak = max(
        [params["exit_radius_km"] * 1.5]
        + [max(d["km"]) for d in series["devices"].values() if d["km"]]
    )
    top_km = _nice(peak)

    def x(t: float) -> float:
        return round(left + (t - start) / max(end - start, 1) * (width - left - right), 1)

    def y(km: float) -> float:
        return round(top + (1 - km / top_km) * (height - top - bottom), 1)

    hours = (end - start) / 3600
    step = 3 if hours <= 25 else 24 * max(1, round(hours / 24 / 8))
    first = dt.datetime.fromtimestamp(start, tz)
    moments = [first + dt.timedelta(hours=k) for k in range(0, int(hours) + 1, step)]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "top": top,
        "bottom": height - bottom,
        "trips": [
            {
                "x": x(dt.datetime.fromisoformat(trip["start"]).timestamp()),
                "width": max(
                    x(dt.datetime.fromisoformat(trip["end"]).timestamp())
                    - x(dt.datetime.fromisoformat(trip["start"]).timestamp()),
                    1,
                ),
                "label": f"trip #{trip['id']} ({trip['device_id']})",
            }
            for trip in summary["trips"]
        ],
        "ticks": [{"y": y(km), "label": f"{km:g} km"} for km in np.linspace(0, top_km, 5)],
        "times": [
            {
                "x": x(moment.timestamp()),
                "label": moment.strftime("%H:%M" if hours <= 25 else "%b %d"),
            }
            for moment in moments
        ],
        "radii": [
            {"name": name, "y": y(params[f"{name}_radius_km"]), "km": params[f"{name}_radius_km"]}
            for name in ("exit", "enter")
        ],
        "lines": [
            {
                "device": device,
                "colour": COLOURS[index % len(COLOURS)],
                "points": " ".join(
                    f"{x(t)},{y(km)}" for t, km in zip(data["t"], data["km"], strict=True)
                ),
            }
            for index, (device, data) in enumerate(sorted(series["devices"].items()))
        ],
    }


PLACE_COLOURS = ("#0969da", "#8250df", "#bf8700", "#1a7f37", "#cf222e", "#0a7ea4", "#953800")
"""A colour per place (home first), the same in the timeline, the table and the track."""


def _place_colours(summary: dict[str, Any]) -> dict[str, str]:
    names = ["home"] + [v["place"] for v in summary.get("places", []) if v["place"] != "home"]
    return {name: PLACE_COLOURS[k % len(PLACE_COLOURS)] for k, name in enumerate(names)}


def _timeline(summary: dict[str, Any], tz: ZoneInfo) -> list[dict[str, Any]]:
    """Each device's days as a bar of stays, moves and unknown time (widths in % of the
    day) and as rows `08:20-17:00  Office  8 h 40 min`."""
    colours = _place_colours(summary)
    days = []
    for device, metrics in sorted(summary.get("devices", {}).items()):
        for day in metrics.get("days", []):
            entries = day.get("timeline", [])
            total = sum(entry["duration_s"] for entry in entries) or 1.0
            segments, rows = [], []
            for entry in entries:
                start = dt.datetime.fromisoformat(entry["start"]).astimezone(tz)
                end = dt.datetime.fromisoformat(entry["end"]).astimezone(tz)
                span = f"{start:%H:%M}\u2013{end:%H:%M}"
                if entry["kind"] == "stay":
                    what = entry["place"]
                    colour = colours.get(entry["place"], PLACE_COLOURS[-1])
                elif entry["kind"] == "move":
                    what = f"move {entry['path_km'] or 0:.1f} km"
                    colour = "#8c959f"
                else:
                    what, colour = "unknown", "#eaeef2"
                duration = _duration(entry["duration_s"])
                segments.append(
                    {
                        "kind": entry["kind"],
                        "width": round(100 * entry["duration_s"] / total, 3),
                        "colour": colour,
                        "label": f"{span} {what} ({duration})",
                    }
                )
                rows.append(
                    {"span": span, "what": what, "kind": entry["kind"], "duration": duration}
                )
            days.append({"device": device, "date": day["date"], "segments": segments, "rows": rows})
    return days


def _local(stamp: str, tz: ZoneInfo) -> str:
    """An ISO 8601 instant as local `YYYY-MM-DD HH:MM`."""
    return f"{dt.datetime.fromisoformat(stamp).astimezone(tz):%Y-%m-%d %H:%M}"


def _places(summary: dict[str, Any], tz: ZoneInfo) -> list[dict[str, Any]]:
    """The table of time per place."""
    colours = _place_colours(summary)
    return [
        {
            **visit,
            "colour": colours.get(visit["place"], PLACE_COLOURS[-1]),
            "total": _duration(visit["total_s"]),
            "first": _local(visit["first_arrival"], tz),
            "last": _local(visit["last_departure"], tz),
        }
        for visit in summary.get("places", [])
    ]


ASSETS = ("leaflet.js", "leaflet.css")
"""The map's vendored files status serves under /assets/ (built by `make install`)."""
_LINKED = re.compile(
    r'<(?:script src|link rel="stylesheet" href)="\.\./\.\./assets/([a-z.]+)\?v=\w+">(?:</script>)?'
)


@functools.cache
def asset(name: str) -> bytes | None:
    """A vendored map file by name, None when it is not one or was not built."""
    if name not in ASSETS:
        return None
    try:
        return (resources.files("shared") / "static" / "leaflet" / name).read_bytes()
    except FileNotFoundError:
        return None


@functools.cache
def asset_version(name: str) -> str:
    """A digest of the file's bytes: its links change when it does, so it may be cached
    for good."""
    return hashlib.sha256(asset(name) or b"").hexdigest()[:12]


def self_contained(page: str) -> str:
    """`page` (as status serves it) with the map's script and style inlined, to be saved
    and opened later without status. A file that was not built is left out: the page says
    the map is missing and shows the rest."""

    def inline(match: re.Match[str]) -> str:
        text = (asset(match[1]) or b"").decode()
        return f"<script>{text}</script>" if match[1].endswith(".js") else f"<style>{text}</style>"

    return _LINKED.sub(inline, page)


FIT_FACTOR = 10
"""A day reaching this many times farther than the median day is left out of the first view."""


def _day_starts(summary: dict[str, Any], tz: ZoneInfo) -> tuple[list[str], npt.NDArray[np.int64]]:
    """The range's local days and the epoch second each begins."""
    first = dt.date.fromisoformat(summary["window"]["first_day"])
    last = dt.date.fromisoformat(summary["window"]["last_day"])
    days = [first + dt.timedelta(days=k) for k in range((last - first).days + 1)]
    starts = [int(dt.datetime.combine(day, dt.time(), tz).timestamp()) for day in days]
    return [day.isoformat() for day in days], np.array(starts, dtype=np.int64)


def _map(
    summary: dict[str, Any], series: dict[str, Any], tz: ZoneInfo, tiles: config.ReportSettings
) -> dict[str, Any]:
    """What the map draws, as plain data for its script: each device's track cut into runs
    (one per day and trip, so a day or a trip can be shown alone), home and its radii, the
    stays, the named places, the trips, the farthest points, and the view that fits what
    matters (`fit`: the days a far trip would otherwise squash into the home dot are left
    out of it, and named in `beyond`)."""
    params = summary["parameters"]
    home_lat, home_lon = params["home_latitude"], params["home_longitude"]
    cos_home = max(math.cos(math.radians(home_lat)), 1e-6)
    dates, starts = _day_starts(summary, tz)
    colours = _place_colours(summary)
    runs: list[dict[str, Any]] = []
    day_far = np.zeros(len(dates))
    lats, lons, kms = [], [], []
    for index, (device, data) in enumerate(sorted(series["devices"].items())):
        if not data["t"]:
            continue
        lat = np.round(home_lat + np.asarray(data["north"]) / KM_PER_DEG, 6)
        lon = np.round(home_lon + np.asarray(data["east"]) / (KM_PER_DEG * cos_home), 6)
        km = np.asarray(data["km"], dtype=np.float64)
        trip = np.asarray(data["trip"], dtype=np.int64)
        day = np.clip(np.searchsorted(starts, np.asarray(data["t"]), side="right") - 1, 0, None)
        np.maximum.at(day_far, day, km)
        cuts = np.flatnonzero((np.diff(day) != 0) | (np.diff(trip) != 0)) + 1
        bounds = np.concatenate(([0], cuts, [len(day)]))
        pairs = np.column_stack((lat, lon))
        for begin, end in itertools.pairwise(bounds):
            # Each run reaches the next one's first fix, so the line has no breaks.
            runs.append(
                {
                    "device": device,
                    "colour": COLOURS[index % len(COLOURS)],
                    "date": dates[day[begin]],
                    "trip": int(trip[begin]),
                    "points": pairs[begin : min(end + 1, len(day))].tolist(),
                }
            )
        lats.append(lat)
        lons.append(lon)
        kms.append(km)
    seen = [k for k, date in enumerate(dates) if any(r["date"] == date for r in runs)]
    # A view fitting the usual days: a day reaching an order of magnitude past the median
    # day's farthest point (a flight among commutes, not a weekend outing) is left out of it.
    reach = (
        max(FIT_FACTOR * statistics.median(day_far[seen]), 2 * params["exit_radius_km"])
        if seen
        else 0
    )
    beyond = [
        {"date": dates[k], "km": round(float(day_far[k]), 1)} for k in seen if day_far[k] > reach
    ]
    fit = None
    if beyond:
        near = np.concatenate(kms) <= reach
        lat_all, lon_all = np.concatenate(lats)[near], np.concatenate(lons)[near]
        fit = [
            [float(min(lat_all.min(), home_lat)), float(min(lon_all.min(), home_lon))],
            [float(max(lat_all.max(), home_lat)), float(max(lon_all.max(), home_lon))],
        ]
    multi_day = len(dates) > 1

    def when(start: str, end: str) -> str:
        begin = dt.datetime.fromisoformat(start).astimezone(tz)
        finish = dt.datetime.fromisoformat(end).astimezone(tz)
        day = f"{begin:%a %d %b} " if multi_day else ""
        return f"{day}{begin:%H:%M}\u2013{finish:%H:%M}"

    return {
        "tiles": tiles.tiles,
        "attribution": tiles.map_tile_attribution,
        "home": {
            "lat": home_lat,
            "lon": home_lon,
            "exit_m": params["exit_radius_km"] * 1000,
            "enter_m": params["enter_radius_km"] * 1000,
            "colour": colours["home"],
        },
        "runs": runs,
        "stays": [
            {
                "lat": stay["latitude"],
                "lon": stay["longitude"],
                "colour": colours.get(stay["place"], PLACE_COLOURS[-1]),
                "date": f"{dt.datetime.fromisoformat(stay['start']).astimezone(tz):%Y-%m-%d}",
                "label": f"{stay['place']} ({stay['device_id']})\n"
                f"{when(stay['start'], stay['end'])} ({_duration(stay['duration_s'])})",
            }
            for stay in summary.get("stays", [])
        ],
        "places": [
            {
                "lat": place["latitude"],
                "lon": place["longitude"],
                "name": place["place"],
                "colour": colours.get(place["place"], PLACE_COLOURS[-1]),
                "label": f"{place['place']}: {_duration(place['total_s'])} in "
                f"{place['visits']} visit{'s' * (place['visits'] != 1)}\n"
                f"first arrival {_local(place['first_arrival'], tz)}\n"
                f"last departure {_local(place['last_departure'], tz)}",
            }
            for place in summary.get("places", [])
            if place["kind"] == "named"
        ],
        "trips": [
            {
                "id": trip["id"],
                "label": f"trip #{trip['id']} ({trip['device_id']}): "
                f"{when(trip['start'], trip['end'])}, farthest "
                f"{trip['max_distance_km'] or 0:,.1f} km, path {trip['path_km']:,.1f} km",
            }
            for trip in summary["trips"]
        ],
        "farthest": [
            {
                "lat": metrics["max_distance_at"]["latitude"],
                "lon": metrics["max_distance_at"]["longitude"],
                "label": f"farthest from home ({device}): {metrics['max_distance_km']:,.2f} km, "
                f"{_local(metrics['max_distance_at']['time'], tz)}",
            }
            for device, metrics in sorted(summary["devices"].items())
            if metrics.get("max_distance_at")
        ],
        "days": [{"date": dates[k], "km": round(float(day_far[k]), 1)} for k in seen],
        "fit": fit,
        "beyond": beyond,
    }


def _months(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per calendar month totals: the summary's own `months` when it has them, else the sum
    of its days."""
    keys = ("points_read", "path_km", "time_at_home_s", "time_away_s", "time_unknown_s")
    months = summary.get("months")
    if months is None:
        totals: dict[str, dict[str, Any]] = {}
        for day in summary["days"]:
            month = totals.setdefault(day["date"][:7], {"month": day["date"][:7], "days": 0})
            month["days"] += 1
            for key in keys:
                month[key] = month.get(key, 0) + day[key]
        months = list(totals.values())
    return [
        {
            "month": dt.date.fromisoformat(f"{month['month'][:7]}-01").strftime("%B %Y"),
            "days": month.get("days", ""),
            "read": f"{month.get('points_read', 0):,}",
            "path": f"{month.get('path_km', 0):,.1f} km",
            "home": _duration(month.get("time_at_home_s", 0)),
            "away": _duration(month.get("time_away_s", 0)),
            "unknown": _duration(month.get("time_unknown_s", 0)),
        }
        for month in months
    ]


CALENDAR_SHADES = ("#dafbe1", "#aceebb", "#6fdd8b", "#2da44e", "#116329")
"""From a short day's path to the longest one's (log scale)."""


def _calendar(summary: dict[str, Any]) -> dict[str, Any]:
    """The range's days as a heatmap of weeks (columns, Monday first) and weekdays (rows),
    each day shaded by its path, titled with its path and time away."""
    cell, gap, left, top = 14, 3, 30, 18
    days = summary["days"]
    first = dt.date.fromisoformat(days[0]["date"])
    monday = first - dt.timedelta(days=first.weekday())
    longest = max(0.1, *(day["path_km"] for day in days))
    cells: list[dict[str, Any]] = []
    months: list[dict[str, Any]] = []
    for day in days:
        date = dt.date.fromisoformat(day["date"])
        week = (date - monday).days // 7
        x, y = left + week * (cell + gap), top + date.weekday() * (cell + gap)
        empty = day["points_read"] == 0
        # On a log scale: a flight's day does not wash out a week of commutes.
        share = math.log1p(day["path_km"]) / math.log1p(longest)
        shade = min(int(share * len(CALENDAR_SHADES)), len(CALENDAR_SHADES) - 1)
        cells.append(
            {
                "x": x,
                "y": y,
                "date": day["date"],
                "colour": "#ebeef1" if empty else CALENDAR_SHADES[shade],
                "title": f"{day['date']}: no fixes"
                if empty
                else f"{day['date']}: path {day['path_km']:,.1f} km, "
                f"away {_duration(day['time_away_s'])}",
            }
        )
        if date.day == 1 or date == first:
            if months and x - months[-1]["x"] < 2 * (cell + gap):
                months.pop()  # the range's first days, too close to a month's start
            months.append({"x": x, "label": f"{date:%b}"})
    weeks = (dt.date.fromisoformat(days[-1]["date"]) - monday).days // 7 + 1
    return {
        "width": max(left + weeks * (cell + gap), months[-1]["x"] + 30, 120),
        "height": top + 7 * (cell + gap),
        "cell": cell,
        "cells": cells,
        "months": months,
        "weekdays": [
            {"y": top + k * (cell + gap) + cell - 3, "label": name}
            for k, name in ((0, "Mon"), (2, "Wed"), (4, "Fri"))
        ],
        "shades": CALENDAR_SHADES,
        "longest": f"{longest:,.1f} km",
    }


@functools.cache
def _template() -> jinja2.Template:
    """The page's template, compiled once per process."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("shared", "templates"), autoescape=select_autoescape(["html"])
    )
    return environment.get_template("report.html")


def render(
    job: dict[str, Any],
    series: dict[str, Any],
    tiles: config.ReportSettings | None = None,
) -> str:
    """The report page of a completed job (`job` is its JobView as JSON), its map's tiles
    from `tiles` (by default the environment's settings); the map's script and style are
    linked from status's /assets/ (`self_contained` inlines them)."""
    summary = job["result"]
    tz = ZoneInfo(summary["window"]["timezone"])
    points = summary["points"]
    days = job["date"] if job["end_date"] == job["date"] else f"{job['date']} to {job['end_date']}"

    # Times of several devices add up (two phones at home all day: 48 h in one day).
    summed = summed_over(len(summary["devices"]), ", ")

    return _template().render(
        job=job,
        summary=summary,
        days=days,
        cards=[
            (f"{points['read']:,}", "fixes read"),
            (f"{points['used']:,}", "fixes used for the path (moving)"),
            (f"{summary['path_km']:.2f} km", f"path (raw {summary['raw_path_km']:.2f} km)"),
            (
                f"{summary.get('path_km_low', 0):.2f}\u2013{summary.get('path_km_high', 0):.2f} km",
                "true path lies within",
            ),
            (f"{summary['max_distance_km']:.2f} km", "farthest from home"),
            (_duration(summary["time_away_s"]), f"away{summed}"),
            (_duration(summary["time_at_home_s"]), f"at home{summed}"),
            (_duration(summary["time_unknown_s"]), f"unknown (gaps){summed}"),
            (str(len(summary["trips"])), "trips"),
        ],
        dropped=", ".join(f"{rule} {n}" for rule, n in points["dropped"].items() if n) or "none",
        trips=[
            {
                **trip,
                "left": _local(trip["start"], tz),
                "back": _local(trip["end"], tz),
                "duration": _duration(trip["duration_s"]),
                "clipped": trip["clipped_start"] or trip["clipped_end"],
            }
            for trip in summary["trips"]
        ],
        summed=summed,
        days_table=[
            {
                **day,
                "home": _duration(day["time_at_home_s"]),
                "away": _duration(day["time_away_s"]),
                "unknown": _duration(day["time_unknown_s"]),
            }
            for day in summary["days"]
        ]
        if len(summary["days"]) > 1
        else [],
        time_chart=_time_chart(summary, series, tz),
        map_data=_map(summary, series, tz, tiles or config.load(config.ReportSettings)),
        assets={name: f"../../assets/{name}?v={asset_version(name)}" for name in ASSETS},
        calendar=_calendar(summary) if len(summary["days"]) > 1 else None,
        months=_months(summary) if len(summary["days"]) > 1 else [],
        timeline=_timeline(summary, tz),
        places=_places(summary, tz),
    )
