"""The Makefile and the CI scripts as a newcomer meets them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from shared.dev.stack import REPO_ROOT


def test_make_help_lists_every_target_aligned() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = {
        name for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.M) for name in line.split()
    }
    run = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = run.stdout.splitlines()
    listed = [line.split()[0] for line in lines]
    assert sorted(listed) == sorted(targets)  # arm64-check too
    assert "arm64-check" in listed
    # Every description starts in the same column, after the longest name.
    columns = {len(line) - len(line.split(maxsplit=1)[1]) for line in lines}
    assert columns == {2 + max(map(len, listed)) + 2}


def _stubs(folder: Path, uid: int) -> Path:
    """A PATH holding only `id` (answering `uid`) and an `apt-get` that records its calls."""
    folder.mkdir()
    (folder / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (folder / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {folder / "calls"}\n')
    for stub in ("id", "apt-get"):
        (folder / stub).chmod(0o755)
    return folder


def _system_deps(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(REPO_ROOT / ".ci" / "system-deps")],
        env={"PATH": str(path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def _missing() -> list[str]:
    # Nothing on this PATH but the stubs: only a pgbouncer at its Debian path is found.
    return [] if os.access("/usr/sbin/pgbouncer", os.X_OK) else ["pgbouncer"]


def test_system_deps_says_in_one_line_what_it_installs(tmp_path: Path) -> None:
    stubs = _stubs(tmp_path / "bin", uid=0)
    run = _system_deps(stubs)
    need = " ".join([*_missing(), "chromium", "jq"])
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert run.stderr == f"system-deps: installing {need} with apt-get\n"
    assert (stubs / "calls").read_text() == f"install -y -qq {need}\n"


def test_system_deps_without_root_says_what_to_install(tmp_path: Path) -> None:
    stubs = _stubs(tmp_path / "bin", uid=1000)
    run = _system_deps(stubs)
    need = " ".join([*_missing(), "chromium", "jq"])
    assert run.returncode == 1
    assert run.stderr == (
        f"missing system packages: {need}\ninstall them with: sudo apt-get install -y {need}\n"
    )
    assert not (stubs / "calls").exists()


def test_what_the_tests_leave_in_the_checkout_is_ignored_by_git() -> None:
    # The report screenshot, coverage data and the demo's folders.
    left = ["artifacts/report.png", ".coverage", ".coverage.host.1.2", "out/x.csv", ".data/x"]
    run = subprocess.run(
        ["git", "check-ignore", "--no-index", *left],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert run.stdout.split() == left, run.stderr
