"""Waiting for a job to finish: status's bounded long polls (`GET /jobs/{id}?wait=`).

The database announces every finish: migration 0004's trigger sends a NOTIFY on the
channel `<schema>.job_finished` with the job id, at commit, whoever finished the job
(compute, a claim out of attempts, the sweep, a cancellation). One listener thread per
status process LISTENs on a direct connection (DATABASE_LISTEN_URL: PgBouncer's
transaction pooling cannot carry a LISTEN) and wakes the requests waiting for that job.
A waiting request holds one of status's threads but no database connection, and the
waits are capped (MAX_STATUS_WAITS), so they never take every thread: one more is refused
with `TooManyWaits` (429, retry in a second) rather than queued behind the others.

Without DATABASE_LISTEN_URL, and while the listener reconnects, a wait re-reads the job
every RECHECK_SECONDS instead: slower to notice, still bounded.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Final

import psycopg
from psycopg import sql

from shared.errors import OtelWorkerError
from shared.jobs import Job

log = logging.getLogger(__name__)

RECHECK_SECONDS: Final = 1.0
"""How often a wait re-reads its job when no listener tells it of the finish."""
RETRY_SECONDS: Final = 1
"""The retry hint of a wait refused because every wait slot is taken."""
_RECONNECT_MOST_SECONDS: Final = 30.0
_LISTEN_TIMEOUT_SECONDS: Final = 1.0
"""How often the listener looks up from its connection (to notice `close`): a timeout of
the wait on the socket, no query."""


def finished_channel(schema: str) -> str:
    """The NOTIFY channel migration 0004's trigger announces finished jobs of `schema` on."""
    return f"{schema}.job_finished"


class TooManyWaits(OtelWorkerError):
    """Every wait slot is taken (MAX_STATUS_WAITS): ask again without waiting, or later."""

    def __init__(self, slots: int) -> None:
        super().__init__(
            f"wait: {slots} requests are already waiting here, the most MAX_STATUS_WAITS "
            f"allows; retry in {RETRY_SECONDS} s, or ask without wait"
        )
        self.retry_after = RETRY_SECONDS


class JobWaits:
    """Bounded waits for jobs to finish, woken by the database's announcements.

    `listen_conninfo` is a direct connection string (None: re-read every RECHECK_SECONDS),
    `max_waits` how many may wait at once, `max_seconds` the longest wait. The listener
    thread starts with the first wait, in the serving process.
    """

    def __init__(
        self, listen_conninfo: str | None, schema: str, *, max_waits: int, max_seconds: float
    ) -> None:
        self.max_waits = max_waits
        self.max_seconds = max_seconds
        self._conninfo = listen_conninfo
        self._channel = finished_channel(schema)
        self._slots = threading.BoundedSemaphore(max_waits) if max_waits else None
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self._listening = threading.Event()
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        """Whether finishes are heard as they happen (the listener is connected)."""
        return self._listening.is_set()

    def wait(self, job_id: uuid.UUID, seconds: float, read: Callable[[], Job]) -> Job:
        """The job (`read()`) once it has finished, or as it stands after `seconds` (cut to
        `max_seconds`). A finished job, or `seconds` 0, is answered at once, without a
        slot; `TooManyWaits` when a wait is needed and every slot is taken."""
        job = read()
        seconds = min(seconds, self.max_seconds)
        if job.finished or seconds <= 0:
            return job
        if self._slots is None or not self._slots.acquire(blocking=False):
            raise TooManyWaits(self.max_waits)
        try:
            return self._wait(job_id, time.monotonic() + seconds, read)
        finally:
            self._slots.release()

    def _wait(self, job_id: uuid.UUID, deadline: float, read: Callable[[], Job]) -> Job:
        self._start_listener()
        woken = threading.Event()
        key = str(job_id)
        with self._lock:
            self._waiting.setdefault(key, set()).add(woken)
        try:
            while True:
                # Read after registering: a finish announced before it is seen here.
                job = read()
                remaining = deadline - time.monotonic()
                if job.finished or remaining <= 0:
                    return job
                woken.wait(remaining if self.listening else min(remaining, RECHECK_SECONDS))
                woken.clear()
        finally:
            with self._lock:
                waiters = self._waiting.get(key)
                if waiters is not None:
                    waiters.discard(woken)
                    if not waiters:
                        del self._waiting[key]

    def _wake(self, key: str | None) -> None:
        """Wake the waits for job `key`, or every wait (None)."""
        with self._lock:
            if key is None:
                events = [event for waiters in self._waiting.values() for event in waiters]
            else:
                events = list(self._waiting.get(key, ()))
        for event in events:
            event.set()

    def _start_listener(self) -> None:
        if self._conninfo is None:
            return
        with self._lock:
            if self._listener is None and not self._closed.is_set():
                self._listener = threading.Thread(
                    target=self._listen, name="job-finished-listener", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        """LISTEN until closed, reconnecting with backoff; every wait re-reads its job
        whenever the connection is (re)made or lost, since announcements may be missed."""
        assert self._conninfo is not None
        delay = 0.5
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    # A peer that vanished without a word is noticed within about a minute.
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                ) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._listening.set()
                    self._wake(None)
                    delay = 0.5
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=_LISTEN_TIMEOUT_SECONDS):
                            self._wake(note.payload)
            except psycopg.Error as exc:
                log.warning(
                    "job-finished listener lost its connection; waits re-read their jobs",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
            self._listening.clear()
            self._wake(None)
            self._closed.wait(delay)
            delay = min(delay * 2, _RECONNECT_MOST_SECONDS)

    def close(self) -> None:
        """Stop the listener (within _LISTEN_TIMEOUT_SECONDS) and wake every wait."""
        self._closed.set()
        self._wake(None)
        if self._listener is not None:
            self._listener.join(timeout=_LISTEN_TIMEOUT_SECONDS + 1)
