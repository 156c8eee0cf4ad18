"""Bounds on what an HTTP client may send the functions, and for how long.

functions-framework runs each function under gunicorn's threaded worker with no limit on
the request line, and a thread reads each request head with a blocking read: a client that
sends half a request and stops holds a thread for good, and as many such clients as there
are threads starve the function (its `/healthz` included). `bound()` makes
functions-framework's gunicorn use `BoundedThreadWorker` and gunicorn's own size limits:

- a request line of at most `REQUEST_LINE` bytes, at most `HEADER_FIELDS` header fields
  of at most `HEADER_FIELD_SIZE` bytes each (gunicorn answers 400 beyond them);
- a thread is taken only once the whole request head has arrived: until then the
  connection waits in gunicorn's poller, and one whose head is not complete within
  `HEAD_SECONDS` is closed;
- a body or a response that stalls for `IO_SECONDS` ends its connection (a kernel socket
  timeout), so a slow client never holds a thread longer than that;
- an idle kept-alive connection is closed after `KEEPALIVE_SECONDS`.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

from gunicorn.workers.gthread import _DEFER, TConn, ThreadWorker

REQUEST_LINE: Final = 4094
HEADER_FIELDS: Final = 100
HEADER_FIELD_SIZE: Final = 8190
HEAD_SECONDS: Final = 10.0
IO_SECONDS: Final = 30
KEEPALIVE_SECONDS: Final = 5

OPTIONS: Final[dict[str, object]] = {
    "limit_request_line": REQUEST_LINE,
    "limit_request_fields": HEADER_FIELDS,
    "limit_request_field_size": HEADER_FIELD_SIZE,
    "keepalive": KEEPALIVE_SECONDS,
    "worker_class": "shared.serving.BoundedThreadWorker",
}
"""What `bound()` sets on functions-framework's gunicorn, over its own options."""

_HEAD_END: Final = b"\r\n\r\n"
_MOST_HEAD: Final = REQUEST_LINE + HEADER_FIELDS * (HEADER_FIELD_SIZE + 2) + 4
"""Beyond this, gunicorn's parser refuses the head anyway: let it (400), stop gathering."""
_TIMEVAL: Final = struct.pack("ll", IO_SECONDS, 0)


class BoundedThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's threaded worker, committing a thread to a request only once its head has
    arrived, and with kernel timeouts on every read and write of a connection."""

    def enqueue_req(self, conn: TConn) -> None:
        """Hand the connection to a thread, its reads and writes bounded in time."""
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            conn.sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL)
        super().enqueue_req(conn)

    def handle(self, conn: TConn) -> Any:
        """Serve the request once its head is complete; until then, back to the poller."""
        waiting = _gather_head(conn)
        return super().handle(conn) if waiting is None else waiting


def _gather_head(conn: TConn) -> Any:
    """Take what the client has sent without waiting. None when the request head is complete
    (or too large: gunicorn's parser refuses it), else `_DEFER` (the poller wakes us when
    more arrives) or False (close: the client left, or took longer than HEAD_SECONDS)."""
    conn.init()
    unreader = conn.parser.unreader
    held = unreader.take_buffered()
    try:
        while _HEAD_END not in held and len(held) <= _MOST_HEAD:
            chunk = conn.sock.recv(65536, socket.MSG_DONTWAIT)
            if not chunk:
                return False
            held += chunk
    except BlockingIOError:
        pass  # all it has sent so far
    except OSError:
        return False
    finally:
        unreader.unread(held)
    if _HEAD_END in held or len(held) > _MOST_HEAD:
        conn.head_since = None
        return None
    now = time.monotonic()
    since = getattr(conn, "head_since", None)
    if since is None:
        conn.head_since = since = now
    return False if now - since > HEAD_SECONDS else _DEFER


def bound() -> None:
    """Make functions-framework's gunicorn apply `OPTIONS` (call at import, before it
    starts serving; repeated calls change nothing)."""
    from functions_framework._http import gunicorn

    application = gunicorn.GunicornApplication
    if getattr(application, "bounded", False):
        return
    load_config: Callable[[Any], None] = application.load_config

    def bounded_config(self: Any) -> None:
        load_config(self)
        for key, value in OPTIONS.items():
            self.cfg.set(key, value)

    # Its options are fixed in its constructor: the config step is where ours can win.
    setattr(application, "load_config", bounded_config)  # noqa: B010
    application.bounded = True
