"""`otel-worker dev` as a person meets it: readable log lines on a terminal (JSON elsewhere, or
with LOG_FORMAT=json), and Ctrl-C stopping everything within 3 seconds. (The line format
itself is tested in tests/unit/test_log_format.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from shared import config
from shared.dev.runner import DEV_PORTS
from shared.dev.stack import SeaweedS3
from tests.conftest import Database

OTEL_WORKER = str(Path(sys.executable).parent / "otel-worker")


def _run_on_a_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    """Run `command` on a pseudo-terminal until it says it is ready, press Ctrl-C (SIGINT to
    its process group, as a terminal does) and return its exit code, its output and how
    long it took to exit."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader whose terminal is the pty
        os.execve(command[0], command, env)
    output = b""

    def read(timeout: float) -> bool:
        nonlocal output
        if select.select([fd], [], [], timeout)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal closed: the process and its children are gone
                return False
            output += chunk
            return bool(chunk)
        return True

    deadline = time.monotonic() + 120
    while b"press Ctrl-C" not in output and time.monotonic() < deadline and read(1):
        pass
    assert b"press Ctrl-C" in output, output.decode(errors="replace")
    os.killpg(pid, signal.SIGINT)
    pressed = time.monotonic()
    done, status = os.waitpid(pid, os.WNOHANG)
    while not done:
        read(0.05)
        if time.monotonic() - pressed > 60:
            os.killpg(pid, signal.SIGKILL)
        done, status = os.waitpid(pid, os.WNOHANG)
    took = time.monotonic() - pressed
    while read(0.1):
        pass
    os.close(fd)
    return (
        os.waitstatus_to_exitcode(status),
        output.decode(errors="replace").replace("\r\n", "\n"),
        took,
    )


def test_dev_on_a_terminal_logs_readably_and_ctrl_c_stops_everything_within_3_s(
    scratch_database: Database, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    env["DATABASE_URL"] = scratch_database.url
    data = tmp_path / f"s3-{uuid.uuid4().hex[:8]}"
    # compute's documented port is taken (by this test, or by whatever holds it already).
    with socket.socket() as holder:
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", DEV_PORTS["compute"]))
            holder.listen()
        code, output, took = _run_on_a_terminal([OTEL_WORKER, "dev", "--local-s3", str(data)], env)
    lines = output.splitlines()
    # Each service is on its documented port, or a warning names the one it took instead.
    for name, port in DEV_PORTS.items():
        if name == "compute" or not re.search(rf"^dev +\| {name} +\S+:{port}/?$", output, re.M):
            taken = re.search(
                rf"WARNING port {port} is taken: {name} listens on port (\d+) instead", output
            )
            assert taken, output[-3000:]
            assert re.search(rf"^dev +\| {name} +\S+:{taken[1]}/?$", output, re.M), output
    assert code == 0, output[-3000:]
    # About 2 s on a quiet machine (SeaweedFS's graceful stop alone took 15 s before); the
    # margin keeps a loaded CI machine from failing what is not a regression.
    assert took < 6.0, f"stopping took {took:.1f} s:\n{output[-3000:]}"
    assert lines[-1] == "dev     | stopped", output[-3000:]
    logged = [line for line in lines if " INFO " in line]
    assert any(line.startswith("submit  | ") and "submit started  pid=" in line for line in logged)
    assert not [line for line in lines if '{"timestamp"' in line], output[-3000:]
    # Nothing it started is left: no function, no SeaweedFS.
    leftovers = subprocess.run(
        ["pgrep", "-f", str(data)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""


def test_log_format_json_keeps_json_on_a_terminal(
    scratch_database: Database, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    # Object-store keys only to start (nothing is stored): the store is not reached here.
    env |= {
        "DATABASE_URL": scratch_database.url,
        "LOG_FORMAT": "json",
        "MINIO_ACCESS_KEY": "unused",
        "MINIO_SECRET_KEY": "unused",
    }
    _, output, _ = _run_on_a_terminal([OTEL_WORKER, "dev"], env)
    started = [line for line in output.splitlines() if '"submit started"' in line]
    assert started, output[-3000:]
    assert json.loads(started[0].split(" | ", 1)[1])["level"] == "INFO"


def test_seaweedfs_killed_after_its_short_grace_keeps_what_it_stored(tmp_path: Path) -> None:
    from minio import Minio

    server = SeaweedS3(tmp_path / "s3", "otel-worker-test", uuid.uuid4().hex).start()
    try:
        client = Minio(
            server.endpoint, server.access_key, server.secret_key, secure=False, region="us-east-1"
        )
        client.make_bucket("kept")
        client.put_object("kept", "a.txt", io.BytesIO(b"still here"), 10)
        started = time.monotonic()
        server.stop(grace=1.0)
        assert time.monotonic() - started < 2.0
    finally:
        server.stop()  # killed, if the stop above did not stop it
    again = SeaweedS3(tmp_path / "s3", server.access_key, server.secret_key).start()
    try:
        client = Minio(
            again.endpoint, again.access_key, again.secret_key, secure=False, region="us-east-1"
        )
        assert client.get_object("kept", "a.txt").read() == b"still here"
    finally:
        again.stop()
