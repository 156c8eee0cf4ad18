"""Test-only fault injection: a process kills itself at a named point when
TEST_FAULT_KILL_AT names that point, as a crash or an evicted pod would end it there.

Unset (always, in a deployment) each point costs one look at an already loaded setting.
"""

from __future__ import annotations

import logging
import os
import signal

from shared import config

log = logging.getLogger(__name__)


def kill_point(point: str) -> None:
    """SIGKILL this process's group (server and workers: the whole pod, at once) when
    TEST_FAULT_KILL_AT is `point`; else return."""
    if config.load(config.FaultSettings).test_fault_kill_at == point:
        log.warning("killed at the test fault point", extra={"point": point})
        os.killpg(os.getpgid(0), signal.SIGKILL)
