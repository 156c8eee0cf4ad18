"""The job report: a self-contained HTML page (inline SVG, no scripts, no external assets).

compute stores a compact `series` of each job (`series_of`, at most a few thousand points
per device, extremes kept); status renders it with the summary (`render`): the figures,
distance from home over time with the trips shaded and the home radii drawn, the track
around home with the stays marked, each day's timeline of stays and moves, the time per
place, the trips table, and the download links.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from pydantic import TypeAdapter

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


def _east_north(stay: dict[str, Any], params: dict[str, Any]) -> tuple[float, float]:
    """A stay's centre in km east and north of home."""
    cos_home = math.cos(math.radians(params["home_latitude"]))
    east = (stay["longitude"] - params["home_longitude"]) * KM_PER_DEG * cos_home
    return east, (stay["latitude"] - params["home_latitude"]) * KM_PER_DEG


def _track_chart(summary: dict[str, Any], series: dict[str, Any]) -> dict[str, Any]:
    """Coordinates of the track-around-home chart (km east and north of home)."""
    size = 480
    params = summary["parameters"]
    extent = max(
        [params["exit_radius_km"] * 1.3]
        + [max(map(abs, d["east"] + d["north"])) for d in series["devices"].values() if d["east"]]
    )
    half = _nice(extent)
    scale = (size / 2 - 12) / half
    colours = _place_colours(summary)
    return {
        "size": size,
        "centre": size / 2,
        "across": f"{2 * half:g} km across",
        "radii": [
            {
                "name": name,
                "r": round(params[f"{name}_radius_km"] * scale, 1),
                "km": params[f"{name}_radius_km"],
            }
            for name in ("exit", "enter")
        ],
        "stays": [
            {
                "x": round(size / 2 + east * scale, 1),
                "y": round(size / 2 - north * scale, 1),
                "colour": colours.get(stay["place"], PLACE_COLOURS[-1]),
                "label": f"{stay['place']}: {stay['start'][11:16]}-{stay['end'][11:16]} "
                f"({_duration(stay['duration_s'])})",
            }
            for stay in summary.get("stays", [])
            for east, north in [_east_north(stay, params)]
            if abs(east) <= half and abs(north) <= half
        ],
        "lines": [
            {
                "device": device,
                "colour": COLOURS[index % len(COLOURS)],
                "points": " ".join(
                    f"{size / 2 + e * scale:.1f},{size / 2 - n * scale:.1f}"
                    for e, n in zip(data["east"], data["north"], strict=True)
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


def render(job: dict[str, Any], series: dict[str, Any]) -> str:
    """The report page of a completed job (`job` is its JobView as JSON)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("shared", "templates"), autoescape=select_autoescape(["html"])
    )
    summary = job["result"]
    tz = ZoneInfo(summary["window"]["timezone"])
    points = summary["points"]
    days = job["date"] if job["end_date"] == job["date"] else f"{job['date']} to {job['end_date']}"

    # Times of several devices add up (two phones at home all day: 48 h in one day).
    summed = summed_over(len(summary["devices"]), ", ")

    return environment.get_template("report.html").render(
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
        track_chart=_track_chart(summary, series),
        timeline=_timeline(summary, tz),
        places=_places(summary, tz),
    )
