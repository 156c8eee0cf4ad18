"""Benchmark of the streaming file readers and `otel-worker import` on a big Takeout file.

Run with `make bench-formats` (or `python -m tests.bench.bench_formats --help`). It writes a
Google Takeout `Records.json` of `--fixes` fixes (8 M by default, about 1.4 GB, laid out as
Takeout lays it out) into a temporary folder, then measures, each in a process of its own
so its peak RSS is its own:

- reading it streamed (the reader's batches, counted and let go: the reader's own pace and
  footprint),
- reading it whole (`read_file`: the batches joined into one `Points`, as `analyze` takes
  them),
- `otel-worker analyze` on it (reading plus the engine),
- `otel-worker import` of its first `--import-fixes` fixes into a database of its own on
  the server (BENCH_DATABASE_URL, else TEST_DATABASE_URL, else postgres@127.0.0.1:5432),
  then again (every fix already present), the database dropped afterwards.

The file is deleted at the end, whatever happens. Not a test: never run by `make test`.
The machine's load average is printed first and last: on a shared machine the figures move
with it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict

START_S = 1_577_836_800  # 2020-01-01T00:00:00Z
CHUNK = 100_000


def write_records(path: Path, fixes: int, seed: int = 7) -> int:
    """A Takeout Records.json of `fixes` fixes 10 s apart, a random walk; returns its bytes."""
    rng = np.random.default_rng(seed)
    lat, lon = 51.3397, 12.3731
    with path.open("w") as out:
        out.write('{\n  "locations": [')
        for first in range(0, fixes, CHUNK):
            count = min(CHUNK, fixes - first)
            lats = np.round((lat + np.cumsum(rng.normal(0, 2e-4, count))) * 1e7).astype(np.int64)
            lons = np.round((lon + np.cumsum(rng.normal(0, 3e-4, count))) * 1e7).astype(np.int64)
            lat, lon = lats[-1] / 1e7, lons[-1] / 1e7
            accuracy = rng.integers(3, 60, count)
            seconds = START_S + 10 * (first + np.arange(count))
            stamps = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="ms")
            rows = [
                f'{{\n    "latitudeE7": {a},\n    "longitudeE7": {o},\n    "accuracy": {c},\n'
                f'    "source": "WIFI",\n    "deviceTag": 1234567,\n'
                f'    "timestamp": "{t}Z"\n  }}'
                for a, o, c, t in zip(
                    lats.tolist(), lons.tolist(), accuracy.tolist(), stamps.tolist(), strict=True
                )
            ]
            out.write((", " if first else " ") + ", ".join(rows))
        out.write("]\n}\n")
    return path.stat().st_size


PEAK = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as status:\n"
    "        kb = next(line.split()[1] for line in status if line.startswith('VmHWM:'))\n"
    "    sys.stderr.write(f'\\npeak-kB {kb}\\n')\n"
    "atexit.register(_peak)\n"
)
"""Prepended to each measured script: at exit it writes the process's own peak RSS. (A child's
`ru_maxrss` is no measure here: a child started by vfork and exec inherits its parent's.)"""


class Measured(NamedTuple):
    """One command's run."""

    seconds: float
    cpu_seconds: float
    """Its own user and system CPU time (not PostgreSQL's): what a busy machine moves least."""
    peak_mb: float
    out: str

    def line(self, label: str, fixes: int) -> str:
        """The figures as one line of the report."""
        return (
            f"{label:<14} {fixes / self.seconds / 1e3:6.0f} k fixes/s "
            f"({fixes / self.cpu_seconds / 1e3:5.0f} k per CPU-s)  {self.seconds:6.1f} s  "
            f"peak RSS {self.peak_mb:6.0f} MB"
        )


def run_measured(script: str, args: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run a Python script alone and measure it."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        argv = [sys.executable, "-c", PEAK + script, *args]
        child = subprocess.Popen(argv, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own CPU times
        child.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        errors = err.read()
        if child.returncode:
            raise SystemExit(f"{' '.join(args)} failed ({child.returncode}):\n{errors}")
        peak_kb = int(errors.rsplit("peak-kB ", 1)[1].split()[0])
        cpu = usage.ru_utime + usage.ru_stime
        return Measured(elapsed, cpu, peak_kb / 1024, out.read())


READ_STREAMED = (
    "from pathlib import Path; from shared.tools.sources import read_batches; "
    "print(sum(len(b) for b in read_batches(Path(sys.argv[1]), 'bench')))"
)
READ_WHOLE = (
    "from pathlib import Path; from shared.tools.sources import read_file; "
    "print(len(read_file(Path(sys.argv[1]))))"
)
CLI = "from shared.cli import main; sys.exit(main(sys.argv[1:]))"


def load() -> str:
    """The load average over 1 minute and the cores, for the reader of the figures."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main() -> None:
    """Generate, measure, report, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixes", type=int, default=8_000_000)
    parser.add_argument("--import-fixes", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as folder:
        big = Path(folder) / "Records.json"
        started = time.perf_counter()
        size = write_records(big, args.fixes)
        print(
            f"generated {args.fixes:,} fixes, {size / 1e9:.2f} GB in "
            f"{time.perf_counter() - started:.0f} s"
        )

        print(load())
        for label, script in (("read streamed", READ_STREAMED), ("read whole", READ_WHOLE)):
            run = run_measured(script, [str(big)])
            assert int(run.out) == args.fixes
            print(run.line(label, args.fixes))
        run = run_measured(
            CLI, ["analyze", str(big), "--home", "51.3397,12.3731", "--tz", "UTC", "--json"]
        )
        print(run.line("analyze", args.fixes))

        small = Path(folder) / "first.json"
        write_records(small, args.import_fixes)
        big.unlink()
        admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get(
            "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        name = f"bench_formats_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            params = conninfo_to_dict(admin)
            url = (
                f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}"
                f":{params.get('port', 5432)}/{name}"
            )
            env = {**os.environ, "DATABASE_URL": url}
            for label in ("import", "import again"):
                run = run_measured(CLI, ["import", str(small), "--device", "bench"], env)
                assert f"{args.import_fixes:,} fixes read" in run.out, run.out
                print(run.line(label, args.import_fixes))
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(load())


if __name__ == "__main__":
    main()
