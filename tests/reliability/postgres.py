"""A PostgreSQL server the test owns: a cluster of its own (the machine's binaries), on its
own port, that a test may stop and start again under the running system."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from shared.dev.stack import free_ports


def _binaries() -> Path:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return found[-1].parent


@dataclass
class OwnedPostgres:
    """`initdb` a cluster in a temporary folder (user postgres; trust, or with `password`
    the server asks for it), start, stop, remove."""

    password: str | None = None
    port: int = 0
    folder: Path | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    def _run(self, *command: str) -> None:
        # The server refuses to run as root: as root, run it as the postgres account.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *command], check=True, capture_output=True, timeout=120, cwd=self.folder
        )

    def create(self) -> OwnedPostgres:
        self.folder = Path(tempfile.mkdtemp(prefix="otel-worker-pg-"))
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        (self.port,) = free_ports(1)
        auth = ["-A", "trust"]
        if self.password is not None:
            secret = self.folder / "password"
            secret.write_text(self.password)
            if os.geteuid() == 0:
                os.chown(secret, account.pw_uid, account.pw_gid)
            auth = ["-A", "scram-sha-256", f"--pwfile={secret}"]
        self._run(str(_binaries() / "initdb"), "-D", str(self.data), *auth, "-U", "postgres")
        if self.password is not None:
            secret.unlink()
        return self.start()

    def start(self) -> OwnedPostgres:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(_binaries() / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
            "-l", str(self.data / "server.log"), "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect everyone, `immediate`: as a crash would)."""
        self._run(str(_binaries() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        if self.folder is None:
            return
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def dsn(self) -> str:
        auth = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/postgres"
