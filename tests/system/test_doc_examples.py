"""Every sh and console block of README.md and docs/API.md runs against a running stack,
command by command (but those listed in `NOT_RUN`, with the reason); the examples' ports are
those `otel-worker dev` listens on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared import config
from tests.repo.test_docs import ROOT, Block, code_blocks, command_lines

if TYPE_CHECKING:
    from tests.stack import Stack


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


RUN_DOCS = (ROOT / "README.md", ROOT / "docs" / "API.md")
NOT_RUN = {
    ("README.md", "make demo"): "the demo starts a stack of its own; test_demo.py runs it",
    ("README.md", ".venv/bin/otel-worker demo --keep"): "runs until Ctrl-C; test_demo.py runs it",
    ("docs/API.md", "grpcurl"): "needs grpcurl, which make install does not install; the CLI "
    "equivalents beside it are run",
    ("docs/API.md", "curl -X POST http://broker-ingress.knative-eventing.svc.cluster.local"): (
        "needs a cluster's broker"
    ),
    ("docs/API.md", "curl -sL http://127.0.0.1:8080/download/"): (
        "the ingress's HTTP_PORT, which otel-worker dev does not set; test_old_callers.py runs it"
    ),
}
"""Blocks not run, named by their file and the start of their first command, with why."""
# Job ids the examples name, and the request of a job that stands in for each.
_EXAMPLE_JOBS = {
    "8ab08be1-32d2-4be6-9da2-eebfab518201": {"date": "2024-03-13", "device_id": "phone1"},
    "e385bba1-b15e-4104-9687-f192cae82048": {"date": "2024-03-13", "device_id": "phone2"},
}
_LABEL = re.compile(r"^([A-Za-z][a-z]*(?: [a-z]+)?) {2,}\S")


@dataclass(frozen=True)
class Step:
    """One command of a block and, in a console block, the output shown after it."""

    line: int
    command: str
    shown: tuple[str, ...]


def steps(block: Block) -> list[Step]:
    """The commands of a sh or console block, each with the output the block shows for it."""
    if block.info.split()[:1] == ["sh"]:
        return [Step(number, text, ()) for number, text in command_lines(block)]
    found: list[Step] = []
    pending: list[str] = []
    for offset, raw in enumerate(block.lines, start=1):
        if pending and pending[-1].endswith("\\"):
            pending[-1] = pending[-1][:-1].rstrip() + " " + raw.strip()
        elif raw.startswith("$ "):
            found.append(Step(block.line + offset, "", ()))
            pending = [raw[2:].strip()]
        elif found:
            found[-1] = Step(found[-1].line, found[-1].command, (*found[-1].shown, raw))
        if pending and not pending[-1].endswith("\\"):
            found[-1] = Step(found[-1].line, pending[0], found[-1].shown)
            pending = []
    return found


def runnable_blocks() -> list[tuple[str, Block]]:
    """(name, block) of every sh or console block of README.md and API.md with a command;
    the name is the file and the start of its first command."""
    found = []
    for path in RUN_DOCS:
        for block in code_blocks(path):
            if block.info.split()[:1] not in (["sh"], ["console"]):
                continue
            commands = steps(block)
            if commands:
                found.append((f"{_relative(path)}:{block.line} {commands[0].command}", block))
    return found


def _skipped_because(name: str) -> str | None:
    where, _, command = name.partition(" ")
    document = where.partition(":")[0]
    for (listed, start), why in NOT_RUN.items():
        if listed == document and command.startswith(start):
            return why
    return None


def test_every_block_not_run_is_listed_for_a_block_that_exists() -> None:
    names = [name for name, _ in runnable_blocks()]
    for (document, start), why in NOT_RUN.items():
        assert why
        assert any(
            n.partition(":")[0] == document and n.partition(" ")[2].startswith(start) for n in names
        ), f"NOT_RUN names no block: {document}: {start}"
    # Most of them run.
    assert sum(_skipped_because(n) is None for n in names) >= 7


def test_the_examples_use_the_ports_otel_worker_dev_listens_on() -> None:
    from shared.dev.runner import DEV_PORTS, DEV_S3_PORT

    documented = {*DEV_PORTS.values(), DEV_S3_PORT}
    for name, block in runnable_blocks():
        if _skipped_because(name):
            continue  # not run against dev, so on the ports its deployment uses
        for step in steps(block):
            for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", step.command):
                assert int(port) in documented, f"{name}: port {port} is not one dev listens on"


def _replacements(stack: Stack) -> dict[str, str]:
    """What turns the examples' ids and ports into this stack's."""
    import urllib3

    replace = {}
    for example, request in _EXAMPLE_JOBS.items():
        response = urllib3.request("POST", stack.url("submit"), json=request)
        assert response.status == 202, response.data
        job_id = response.json()["job"]["job_id"]
        assert stack.wait_finished(job_id).status == "completed"
        replace[example] = job_id
        replace[f"_{example[:8]}."] = f"_{job_id[:8]}."
    ports = {
        "8081": stack.url("submit"),
        "8082": stack.url("compute"),
        "8083": stack.url("status"),
        "8084": stack.url("broker").rstrip("/"),
        "50051": f"http://{stack.url('ingress')}",
        "9000": f"http://{stack.s3.endpoint}",
    }
    for port, url in ports.items():
        replace[f"127.0.0.1:{port}"] = url.removeprefix("http://")
    return replace


def _substitute(text: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def _labels(lines: Iterable[str]) -> set[str]:
    return {match[1] for line in lines if (match := _LABEL.match(line))}


def _check(name: str, step: Step, run: subprocess.CompletedProcess[str]) -> None:
    where = f"{name.partition(' ')[0]}: `{step.command}`"
    # A console block shows what a terminal does: stdout and stderr (progress, errors) together.
    output = run.stdout.splitlines() + run.stderr.splitlines()
    printed = f"\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    shown = [line for line in step.shown if line.strip()]
    if shown and shown[0].startswith("otel-worker: "):
        assert run.returncode != 0, f"{where} should fail:{printed}"
        assert shown[0] in output, f"{where} printed no {shown[0]}:{printed}"
        return
    assert run.returncode == 0, f"{where} exited {run.returncode}:{printed}"
    if not shown:
        return
    if shown[0].startswith("HTTP/"):
        status = run.stdout.splitlines()[:1]
        assert status, f"{where}:{printed}"
        assert status[0].split()[:2] == shown[0].split()[:2], f"{where}:{printed}"
        return
    missing = _labels(shown) - _labels(output)
    assert not missing, f"{where} printed no {sorted(missing)}:{printed}"
    start = shown[0].split()[0][:8]  # "job", "{"jobs":", "timestam": not ids, which differ
    assert any(line.startswith(start) for line in output), f"{where}:{printed}"


def test_the_readme_and_api_examples_run_against_a_running_stack(
    stack: Stack, tmp_path: Path
) -> None:
    """Every sh and console block of README.md and API.md, command by command, in order:
    each exits 0 (or fails as shown), and a console block's output shows what it shows (the
    HTTP status, the same labelled lines, the same start). The stack runs on free ports and
    its own job ids, which replace the examples' (dev's ports, literal there)."""
    replace = _replacements(stack)
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {k: v for k, v in os.environ.items() if k not in config.variable_names()}
    env["INGRESS_ADDRESS"] = stack.url("ingress")
    ran = 0
    for name, block in runnable_blocks():
        if _skipped_because(name) is not None:
            continue
        document = name.partition(":")[0]
        if document == "README.md":
            # The README's own instructions put .venv/bin on PATH; nothing else does.
            script = "\n".join(s.command for s in steps(block))
            sets_path = ".venv/bin:$PATH" in script
            if sets_path:
                script += "\ncommand -v otel-worker"
            run = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=ROOT,
                env=env | {"PATH": path},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert run.returncode == 0, f"{name}: {run.stdout[-2000:]}{run.stderr[-2000:]}"
            if sets_path:
                assert run.stdout.splitlines()[-1] == str(ROOT / ".venv" / "bin" / "otel-worker")
            ran += 1
            continue
        for step in steps(block):
            command = _substitute(step.command, replace)
            run = subprocess.run(
                # As typed at a prompt: a pipeline's status is its last command's, so
                # `curl … | head -2` succeeds though head closes the pipe on curl.
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env | {"PATH": f"{venv_bin}{os.pathsep}{path}"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            shown = Step(step.line, command, tuple(_substitute(s, replace) for s in step.shown))
            _check(name, shown, run)
            ran += 1
    assert ran >= 15
