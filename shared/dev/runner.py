"""`otel-worker dev`: the whole system on one machine, each function its own process.

The supervisor starts the dev broker (in this process, reading the Triggers from
`knative/`), the three HTTP functions under functions-framework and the gRPC ingress,
wires them together the way Knative does (K_SINK, SUBMIT_URL, STATUS_URL), runs the
maintenance sweep periodically, and streams one log in which every line is prefixed by
its service. Stopping it stops everything it started. The end-to-end tests use it too.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc

from shared import config
from shared.dev.broker import DevBroker, service_resolver
from shared.dev.manifests import load_eventing
from shared.dev.stack import (
    HTTP_FUNCTIONS,
    SeaweedS3,
    ServiceProcess,
    choose_ports,
    grpc_serving,
    http_function,
    http_status,
    ingress_process,
    stop_all,
    wait_until,
)
from shared.errors import OtelWorkerError
from shared.logs import readable_line, wants_text

log = logging.getLogger(__name__)

DEV_PORTS = {"submit": 8081, "compute": 8082, "status": 8083, "broker": 8084, "ingress": 50051}
"""Where `otel-worker dev` listens when the port is free: the documented addresses (the
ingress on the CLI's default INGRESS_ADDRESS), so the documents' examples work as written."""
DEV_S3_PORT = 9000
"""Where `otel-worker dev --local-s3` serves S3 when free (MINIO_ENDPOINT's default)."""

STOP_GRACE_SECONDS = 2.0
"""What Ctrl-C gives the services to exit before they are killed. An idle function exits
in well under a second; a request still running after this is cut off, as a pod's would be
past its grace period (it is retried, or its job taken over after its lease)."""

_NOT_FOR_INGRESS = frozenset(
    name.upper()
    for settings in (config.DatabaseSettings, config.StorageSettings)
    for name in settings.model_fields
)


class StartFailed(OtelWorkerError, RuntimeError):
    """A service exited, or never became ready, while the stack started (its own log lines
    say why)."""


class PrefixedLog:
    """One output stream shared by several services, each line prefixed by its name; with
    `readable`, the services' JSON log lines are shown as readable lines."""

    def __init__(self, out: IO[str], readable: bool = False) -> None:
        self._out = out
        self._readable = readable
        self._lock = threading.Lock()
        self._width = max(len(n) for n in (*HTTP_FUNCTIONS, "ingress", "broker"))

    def line(self, service: str, text: str) -> None:
        """Write `text` for `service` (each of its lines prefixed)."""
        prefix = f"{service:<{self._width}} | "
        with self._lock:
            self._out.write("".join(f"{prefix}{part}\n" for part in text.rstrip().split("\n")))
            self._out.flush()

    def pump(self, service: str, stream: IO[bytes]) -> threading.Thread:
        """Copy a child's output line by line until it closes."""

        def run() -> None:
            with stream:
                for raw in stream:
                    text = raw.decode(errors="replace")
                    self.line(service, readable_line(text) if self._readable else text)

        thread = threading.Thread(target=run, name=f"log-{service}", daemon=True)
        thread.start()
        return thread


class _LogHandler(logging.Handler):
    """Routes this process's own records (broker, sweep) into the prefixed log."""

    def __init__(self, sink: PrefixedLog, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.sink = sink
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        service = "broker" if record.name.startswith("shared.dev.broker") else "dev"
        self.sink.line(service, self.format(record))


@dataclass
class Supervisor:
    """Starts, watches and stops the local stack.

    `env` is the environment every function gets (database, storage, analysis settings);
    `migrate` runs once before anything starts; `sweep` runs every `sweep_interval` s.
    """

    env: dict[str, str]
    out: IO[str]
    migrate: Callable[[], object] | None = None
    sweep: Callable[[str], object] | None = None
    sweep_interval: float = 30.0
    time_scale: float = 1.0
    ready_timeout: float = 60.0
    workdir: Path | None = None
    """Where the services run (and whose `.env` they read); None: this process's directory."""
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Settings of one service on top of `env` (its own credentials, say)."""
    readable: bool = False
    """Show the services' JSON log lines as readable lines (for a terminal)."""
    ports: dict[str, int] = field(default_factory=dict)
    """Ports to listen on by service name (`DEV_PORTS`) where free; others get free ports."""
    stop_grace: float = STOP_GRACE_SECONDS
    """How long the services have, together, to exit on `stop` before they are killed."""
    compute_workers: int = 1
    """Compute processes (`compute`, `compute-2`, ...): the broker delivers to each in turn,
    as Knative spreads a range job's device-days over compute pods."""
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    broker: DevBroker | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _log: PrefixedLog | None = None
    _handler: logging.Handler | None = None
    _replaced: list[logging.Handler] = field(default_factory=list)

    @property
    def urls(self) -> dict[str, str]:
        """Where each service listens (the ingress as host:port, the others as URLs)."""
        urls = {name: s.url for name, s in self.services.items() if name != "ingress"}
        if "ingress" in self.services:
            urls["ingress"] = f"127.0.0.1:{self.services['ingress'].port}"
        if self.broker is not None:
            urls["broker"] = self.broker.url
        return urls

    def start(self) -> Supervisor:
        """Bring everything up and wait until each service answers its readiness check."""
        self._log = PrefixedLog(self.out, self.readable)
        root = logging.getLogger()
        formatter = root.handlers[0].formatter if root.handlers else None
        self._handler = _LogHandler(self._log, formatter)
        # This process's records go to the shared log only (prefixed), not twice.
        self._replaced = root.handlers[:]
        root.handlers[:] = [self._handler]
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self.migrate is not None:
            self.migrate()
        extra = [f"compute-{k}" for k in range(2, self.compute_workers + 1)]
        # The extra compute workers right after compute, where the log lists them.
        functions = [
            n for name in HTTP_FUNCTIONS for n in ([name, *extra] if name == "compute" else [name])
        ]
        ports = choose_ports((*functions, "ingress", "broker"), self.ports)
        for name, port in ports.items():
            wanted = self.ports.get(name)
            if wanted is not None and port != wanted:
                log.warning("port %d is taken: %s listens on port %d instead", wanted, name, port)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        brokers, triggers = load_eventing()
        targets: dict[str, str | list[str]] = dict(urls)
        targets["compute"] = [urls["compute"], *(urls[name] for name in extra)]
        self.broker = DevBroker(
            brokers, triggers, service_resolver(targets), time_scale=self.time_scale
        ).start(ports["broker"])
        base = {**self.env, "K_SINK": self.broker.url}
        for name in functions:
            function = name.split("-")[0]
            env = {**base, "OTEL_SERVICE_NAME": f"otel-worker-{function}"}
            env |= self.service_env.get(function, {})
            self.services[name] = http_function(function, ports[name], env, self.workdir)
        # Deployed, the ingress holds no database or object store credentials; here it gets
        # none of those settings at all, which shows it has no use for them.
        ingress_env = {
            # Local and loopback only: no token needed unless one is set (the environment wins).
            "GRPC_ALLOW_UNAUTHENTICATED": "true",
            **{k: v for k, v in base.items() if k not in _NOT_FOR_INGRESS},
            "SUBMIT_URL": urls["submit"],
            "STATUS_URL": urls["status"],
            "OTEL_SERVICE_NAME": "otel-worker-ingress",
            **self.service_env.get("ingress", {}),
        }
        self.services["ingress"] = ingress_process(ports["ingress"], ingress_env, self.workdir)
        assert self._log is not None
        for name, service in self.services.items():
            service.start(stdout=subprocess.PIPE)
            assert service.process is not None
            assert service.process.stdout is not None
            self._threads.append(self._log.pump(name, service.process.stdout))
        for name, service in self.services.items():
            self._wait_ready(name, service)
        if self.sweep is not None:
            thread = threading.Thread(target=self._sweep_loop, name="sweep", daemon=True)
            thread.start()
            self._threads.append(thread)
        for name, url in self.urls.items():
            log.info("%s listening on %s", name, url)

    def say(self, text: str) -> None:
        """A line of the supervisor's own in the shared log."""
        assert self._log is not None, "not started"
        self._log.line("dev", text)

    def restart(self, name: str) -> None:
        """Stop `name` if it still runs and start it again on the same port (a new pod)."""
        service = self.services[name]
        service.stop()
        assert self._log is not None
        service.start(stdout=subprocess.PIPE)
        assert service.process is not None
        assert service.process.stdout is not None
        self._threads.append(self._log.pump(name, service.process.stdout))
        self._wait_ready(name, service)

    def _wait_ready(self, name: str, service: ServiceProcess) -> None:
        def ready() -> bool:
            if not service.alive():
                raise StartFailed(f"{name} exited before it was ready (its log lines say why)")
            if name == "ingress":
                return grpc_serving(f"127.0.0.1:{service.port}")
            return http_status(f"{service.url}/readyz") == 200

        try:
            wait_until(
                ready, self.ready_timeout, name, interval=0.05, ignore=(OSError, grpc.RpcError)
            )
        except TimeoutError as exc:
            raise StartFailed(f"{exc} (its log lines say why)") from None

    def _sweep_loop(self) -> None:
        assert self.sweep is not None
        assert self.broker is not None
        while not self._stop.wait(self.sweep_interval):
            try:
                self.sweep(self.broker.url)
            except Exception:
                log.exception("sweep failed; trying again next round")

    def stop(self) -> None:
        """Stop every service at once (SIGTERM, then SIGKILL after `stop_grace` s), then
        the broker."""
        self._stop.set()
        stop_all(list(self.services.values()), self.stop_grace)
        if self.broker is not None:
            self.broker.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._handler is not None:
            logging.getLogger().handlers[:] = self._replaced
            self._handler = None


def run_dev(
    out: IO[str], sweep_interval: float, local_s3: Path | None, compute_workers: int = 3
) -> int:
    """`otel-worker dev`: run the stack until Ctrl-C or SIGTERM, then stop all of it.

    `compute_workers` compute processes take the broker's deliveries in turn, so a range
    job's device-days are computed side by side as on several pods.

    With `local_s3`, a SeaweedFS S3 server is started with its data in that folder and
    the functions use it; otherwise they use the configured object store.
    """
    from shared.maintenance import migrate_jobs, sweep_once
    from shared.supersession import refresh_once

    database = config.load(config.DatabaseSettings)
    telemetry = config.load(config.TelemetrySettings)
    jobs = config.load(config.JobSettings)
    event_settings = config.load(config.EventSettings)
    env = dict(os.environ)
    s3: SeaweedS3 | None = None
    stop = threading.Event()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    def maintain(sink: str) -> None:
        """The sweep, then the late-fix check (once the object store is known: its CSVs)."""
        events = event_settings.model_copy(update={"k_sink": sink})
        sweep_once(database, jobs, events)
        if env.get("MINIO_ACCESS_KEY") and env.get("MINIO_SECRET_KEY"):
            fields = config.StorageSettings.model_fields
            storage = config.StorageSettings.model_validate(
                {name: env[name.upper()] for name in fields if name.upper() in env}
            )
            home = config.load(config.AnalysisSettings).home_timezone
            refresh_once(database, jobs, storage, events, home)

    # While starting, a signal unwinds the start (which stops what it started); once
    # running, it ends the wait below.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    supervisor = Supervisor(
        env=env,
        out=out,
        migrate=lambda: migrate_jobs(database),
        sweep=maintain,
        sweep_interval=sweep_interval,
        readable=wants_text(telemetry.log_format, out),
        ports=DEV_PORTS,
        compute_workers=compute_workers,
    )
    try:
        if local_s3 is not None:
            s3 = SeaweedS3(
                data_dir=local_s3,
                access_key=env.get("MINIO_ACCESS_KEY") or "otel-worker-dev",
                secret_key=env.get("MINIO_SECRET_KEY") or secrets.token_hex(16),
                s3_port=DEV_S3_PORT,
            ).start()
            env.update(
                MINIO_ENDPOINT=s3.endpoint,
                MINIO_ACCESS_KEY=s3.access_key,
                MINIO_SECRET_KEY=s3.secret_key,
                MINIO_SECURE="false",
            )
        supervisor.start()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        for name, url in supervisor.urls.items():
            supervisor.say(f"{name:<8} {url}")
        if s3 is not None:
            taken = "" if s3.s3_port == DEV_S3_PORT else f"; port {DEV_S3_PORT} is taken"
            supervisor.say(f"s3       http://{s3.endpoint} (bucket settings apply{taken})")
        ingress = supervisor.urls["ingress"]
        if ingress != f"127.0.0.1:{DEV_PORTS['ingress']}":
            supervisor.say(f"for otel-worker submit/status/jobs: export INGRESS_ADDRESS={ingress}")
        supervisor.say("press Ctrl-C to stop everything")
        while not stop.wait(0.5):
            dead = [name for name, s in supervisor.services.items() if not s.alive()]
            if dead:
                supervisor.say(f"{', '.join(dead)} exited; stopping")
                return 1
        return 0
    finally:
        # Everything is told to stop at once, so the wait is one grace period in all.
        stopping = time.monotonic()
        if s3 is not None:
            s3.terminate()
        supervisor.stop()
        if s3 is not None:
            s3.stop(grace=max(STOP_GRACE_SECONDS - (time.monotonic() - stopping), 0.1))
        PrefixedLog(out).line("dev", "stopped")  # the supervisor's own log has stopped with it
