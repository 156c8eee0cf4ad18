"""Settings, read once from the environment (and `.env` when present).

Every setting keeps the environment name of the Go original. Settings are grouped by
concern; a process loads only the groups it uses, so the ingress never needs object-store
keys and the engine never needs a database. A bad value fails at start-up with a
`ConfigError` naming the variable.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.contracts import check_time_zone
from shared.engine.params import EngineParams, NamedPlace
from shared.errors import OtelWorkerError

Port = Annotated[int, Field(ge=1, le=65535)]
PositiveFloat = Annotated[float, Field(gt=0)]
_SQL_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(:\d{1,5})?$")
_PUBLIC_ENDPOINT = re.compile(
    r"^(?:(?P<scheme>https?)://)?(?P<host>[A-Za-z0-9.-]+(?::\d{1,5})?)/?$"
)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # S3 SigV4 refuses longer expiries


def _bearer_token(value: SecretStr | None) -> SecretStr | None:
    # A Secret made from a file ends in a newline no client can send: strip the ends.
    token = value.get_secret_value().strip() if value else ""
    if not all(" " <= char <= "~" for char in token):
        raise ValueError("must be printable ASCII (all that gRPC metadata can carry)")
    return SecretStr(token) if token else None


BearerToken = Annotated[SecretStr | None, AfterValidator(_bearer_token)]
"""GRPC_AUTH_TOKEN: surrounding whitespace stripped; empty or blank means no token."""


class ConfigError(OtelWorkerError, ValueError):
    """A setting is missing or invalid; the message names each offending variable."""


def load_places(path: Path) -> tuple[NamedPlace, ...]:
    """The named places in a YAML or JSON file: a list of `name`, `latitude`, `longitude`
    and `radius_m` (default 100). ValueError naming the file and the entry when it is bad."""
    import yaml  # only a process given a places file needs the parser

    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read places from {path}: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a list of places (name, latitude, longitude)")
    places = []
    for k, entry in enumerate(entries):
        try:
            places.append(NamedPlace.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'entry'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ValueError(f"{path}: place {k + 1}: {problems}") from None
    names = [place.name for place in places]
    for name in names:
        if name == "home" or names.count(name) > 1:
            raise ValueError(f"{path}: the place name {name!r} is taken (home, or twice)")
    return tuple(places)


class SettingsGroup(BaseSettings):
    """A group of settings one concern reads; each process loads only the groups it uses."""

    model_config = SettingsConfigDict(
        # Validators are built when a group is first loaded: a process pays only for its own.
        defer_build=True,
        env_file=".env",
        env_file_encoding="utf-8",
        # An empty variable (GRPC_AUTH_TOKEN: "" in a Secret) means unset, not "".
        env_ignore_empty=True,
        extra="ignore",
        case_sensitive=False,
        frozen=True,
        # "inf" and "nan" parse as floats: no threshold, limit or timeout means either.
        allow_inf_nan=False,
    )


def _postgres_url(value: SecretStr | None) -> SecretStr | None:
    """A `postgresql://` connection URI, or None when empty; ValueError otherwise."""
    url = value.get_secret_value() if value else ""
    if url and not url.startswith(("postgres://", "postgresql://")):
        raise ValueError("must start with postgresql://")
    if url:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        try:
            conninfo_to_dict(url)
        except ProgrammingError:
            # libpq's message quotes the whole string, password included.
            raise ValueError(
                "is not a valid connection URI (its text is not shown: it may hold a password)"
            ) from None
    return value if url else None


class DatabaseSettings(SettingsGroup):
    """PostgreSQL: one DSN for reads, the jobs store and migrations (PgBouncer in production)."""

    database_url: SecretStr | None = None
    """May hold a password: kept out of reprs, logs and `otel-worker config`."""
    postgres_host: str = "127.0.0.1"
    postgres_port: Port = 5432
    postgres_db: str = "owntracks"
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    jobs_schema: str = "otel_worker"
    db_service_role: str | None = None
    """The role the services log in as: `otel-worker migrate` grants it the jobs table and
    SELECT on public.locations, and nothing else (docs/DATABASE.md#roles)."""
    db_connect_timeout_seconds: PositiveFloat = 5.0
    db_startup_retry_seconds: Annotated[float, Field(ge=0)] = 30.0
    db_pool_max_size: Annotated[int, Field(ge=1, le=100)] = 4

    @field_validator("jobs_schema", "db_service_role")
    @classmethod
    def _schema_is_identifier(cls, value: str | None) -> str | None:
        if value is not None and not _SQL_IDENTIFIER.match(value):
            raise ValueError("must be a lower-case SQL identifier (letters, digits, _)")
        return value

    @field_validator("database_url")
    @classmethod
    def _url_is_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        return _postgres_url(value)

    def conninfo(self) -> str:
        """The libpq connection string: `DATABASE_URL` if set, else built from the parts."""
        if self.database_url:
            return self.database_url.get_secret_value()
        password = self.postgres_password.get_secret_value()
        auth = quote(self.postgres_user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return (
            f"postgresql://{auth}@{self.postgres_host}:{self.postgres_port}/"
            f"{quote(self.postgres_db, safe='')}"
        )


class AnalysisSettings(SettingsGroup):
    """Home, time zone and the filter thresholds of the distance engine.

    The filter defaults were chosen by measurement (docs/FUNCTIONALITY.md): JITTER_RADIUS_M 120
    and JITTER_FIXES 10 keep a phone resting for 24 h with 25 m noise under 0.2 km while
    a 400 m walk still counts; MAX_SPEED_KMH 500 is above any ground transport, so only
    teleports (and fixes taken in flight, whose path the segments still bridge) are jumps.
    """

    home_latitude: Annotated[float, Field(ge=-90, le=90)] = 40.736097
    home_longitude: Annotated[float, Field(ge=-180, le=180)] = -74.039373
    away_threshold_km: PositiveFloat = 0.5
    home_enter_km: PositiveFloat = 0.3
    home_timezone: str = "America/New_York"
    max_accuracy_m: PositiveFloat = 200.0
    max_speed_kmh: PositiveFloat = 500.0
    max_gap_minutes: PositiveFloat = 30.0
    jitter_radius_m: Annotated[float, Field(ge=0)] = 120.0
    jitter_fixes: Annotated[int, Field(ge=1, le=1000)] = 10
    drop_duplicates: bool = True
    stay_min_minutes: PositiveFloat = 5.0
    stay_radius_m: PositiveFloat = 100.0
    stay_max_silence_hours: PositiveFloat = 12.0
    places_file: Path | None = None
    """YAML or JSON list of named places (a ConfigMap in production)."""

    @field_validator("places_file")
    @classmethod
    def _places_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            load_places(value)
        return value

    @field_validator("home_timezone")
    @classmethod
    def _timezone_exists(cls, value: str) -> str:
        return check_time_zone(value)

    @functools.cached_property
    def places(self) -> tuple[NamedPlace, ...]:
        """The named places of `PLACES_FILE`, read once per process (not on every request:
        submit builds the engine's parameters for each job)."""
        return load_places(self.places_file) if self.places_file else ()

    def engine_params(self) -> EngineParams:
        """These settings as the distance engine's parameters."""
        return EngineParams(
            home_latitude=self.home_latitude,
            home_longitude=self.home_longitude,
            exit_radius_km=self.away_threshold_km,
            enter_radius_km=self.home_enter_km,
            max_accuracy_m=self.max_accuracy_m,
            max_speed_kmh=self.max_speed_kmh,
            max_gap_s=self.max_gap_minutes * 60,
            jitter_radius_m=self.jitter_radius_m,
            jitter_fixes=self.jitter_fixes,
            drop_duplicates=self.drop_duplicates,
            stay_min_minutes=self.stay_min_minutes,
            stay_radius_m=self.stay_radius_m,
            stay_max_silence_hours=self.stay_max_silence_hours,
            places=self.places,
        )

    @model_validator(mode="after")
    def _radii_ordered(self) -> Self:
        if self.home_enter_km >= self.away_threshold_km:
            raise ValueError(
                "HOME_ENTER_KM must be smaller than AWAY_THRESHOLD_KM "
                f"({self.home_enter_km} >= {self.away_threshold_km})"
            )
        return self


class StorageSettings(SettingsGroup):
    """Object storage (MinIO in production), the CSV limits and the read limit."""

    minio_endpoint: str = "127.0.0.1:9000"
    minio_public_endpoint: str | None = None
    minio_region: str = "us-east-1"
    minio_access_key: SecretStr
    minio_secret_key: SecretStr
    minio_bucket: str = "otel-worker"
    minio_secure: bool = False
    minio_create_bucket: bool = True
    presign_expiry_seconds: Annotated[int, Field(ge=1, le=MAX_PRESIGN_SECONDS)] = 3600
    csv_output_path: Path | None = None
    # Sized for compute's 512Mi memory and 256Mi /scratch (TMPDIR): about 300 bytes of memory
    # and 105 bytes of CSV per fix were measured (bench-pipeline: 266k fixes peaked at 171 MB).
    max_csv_rows: Annotated[int, Field(ge=1)] = 1_000_000
    max_csv_bytes: Annotated[int, Field(ge=1)] = 200_000_000
    # What one device-day's read may hold, context (fixes before and after the window)
    # included: a device-day at one fix a second is 86,400, so this leaves room for dense
    # context while a job of N days reads at most N times this per device.
    max_day_read_rows: Annotated[int, Field(ge=1)] = 250_000

    @field_validator("minio_endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, value: str) -> str:
        if not _HOST_PORT.match(value):
            raise ValueError("must be host[:port] without a scheme or path")
        return value

    @field_validator("minio_public_endpoint")
    @classmethod
    def _public_endpoint(cls, value: str | None) -> str | None:
        if value and not _PUBLIC_ENDPOINT.match(value):
            raise ValueError("must be host[:port] or http(s)://host[:port], without a path")
        return value or None

    @field_validator("minio_bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise ValueError("must be a valid S3 bucket name (3-63 of a-z 0-9 . -)")
        return value

    @property
    def public_host(self) -> tuple[str, bool]:
        """host:port presigned URLs are signed for (what a browser reaches), and whether it
        uses HTTPS (an explicit scheme on MINIO_PUBLIC_ENDPOINT wins over MINIO_SECURE)."""
        match = _PUBLIC_ENDPOINT.match(self.minio_public_endpoint or self.minio_endpoint)
        assert match is not None  # both were validated
        scheme = match["scheme"]
        return match["host"], (scheme == "https") if scheme else self.minio_secure


class JobSettings(SettingsGroup):
    """Job lifecycle: request limits, leases, retries and retention."""

    max_range_days: Annotated[int, Field(ge=1, le=366)] = 366
    job_lease_seconds: Annotated[int, Field(ge=5)] = 300
    job_max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    job_retention_days: Annotated[int, Field(ge=1)] = 30
    job_republish_seconds: Annotated[int, Field(ge=1)] = 120
    # Fixes a phone buffered arrive hours, rarely days, late: a week back catches them while
    # the late-fix check stays a scan of a few days per device.
    refresh_days: Annotated[int, Field(ge=1, le=366)] = 7


class AdmissionSettings(SettingsGroup):
    """How much may be asked and how fast: pending work counted in device-days and a token
    bucket per requester, both checked by submit (the only function that rate-limits)."""

    # A day of one device takes compute well under a second to a few seconds: 500 pending
    # device-days is minutes of work, and a month of every-device jobs counts 31 per job.
    max_pending_jobs: Annotated[int, Field(ge=1)] = 500
    request_rate_per_minute: Annotated[float, Field(gt=0)] = 60.0
    request_burst: Annotated[int, Field(ge=1)] = 30


class WaitSettings(SettingsGroup):
    """status's waits for a job to finish: where it hears of finishes, how many may wait at
    once and for how long."""

    database_listen_url: SecretStr | None = None
    """A direct connection to PostgreSQL (not through PgBouncer, whose transaction pooling
    cannot carry a LISTEN) on which status hears of finished jobs at once; without it a
    waiting request re-reads its job every second. Same form as DATABASE_URL."""
    # Half of status's 16 threads (THREADS): waits never starve plain reads.
    max_status_waits: Annotated[int, Field(ge=0, le=1000)] = 8
    # Below status's timeoutSeconds (30) and the ingress's UPSTREAM_TIMEOUT_SECONDS (20).
    max_wait_seconds: Annotated[float, Field(ge=0, le=300)] = 15.0
    threads: Annotated[int | None, Field(ge=1)] = None
    """functions-framework's THREADS, the gunicorn threads of the process (unset: its
    default, 4 per CPU)."""

    @property
    def wait_slots(self) -> int:
        """How many may wait at once: MAX_STATUS_WAITS, and never more than half of the
        process's threads, so plain reads always find one."""
        threads = self.threads or (os.cpu_count() or 1) * 4
        return min(self.max_status_waits, threads // 2)

    @field_validator("database_listen_url")
    @classmethod
    def _url_is_postgres(cls, value: SecretStr | None) -> SecretStr | None:
        return _postgres_url(value)


class EventSettings(SettingsGroup):
    """Where events are published: `K_SINK` is injected by a Knative SinkBinding."""

    k_sink: AnyHttpUrl | None = None
    event_source: str = "/otel-worker"
    publish_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    publish_timeout_seconds: PositiveFloat = 5.0


class HttpServerSettings(SettingsGroup):
    """The HTTP port a function listens on (Knative sets `PORT`)."""

    port: Port = 8080


class GrpcSettings(SettingsGroup):
    """The ingress server: gRPC port, bearer token (required unless unauthenticated access
    is asked for by name), TLS, message size limit, and the plain-HTTP download port old
    callers use."""

    grpc_port: Port = 50051
    port: Port | None = None
    grpc_allow_unauthenticated: bool = False
    """Serve callers without a token on purpose (in-cluster callers behind a NetworkPolicy).
    Declared before the token: the token's check reads it."""
    grpc_auth_token: Annotated[BearerToken, Field(validate_default=True)] = None
    grpc_tls_cert: FilePath | None = None
    grpc_tls_key: Annotated[FilePath | None, Field(validate_default=True)] = None
    grpc_max_receive_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 64 * 1024
    http_port: Port | None = None
    """Also answer `GET /download/...` over plain HTTP here, as the original did on 8080."""
    download_proxy: bool = False
    """Relay the CSV's bytes instead of redirecting to the object store."""

    @field_validator("grpc_auth_token")
    @classmethod
    def _token_or_open_by_choice(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        # Fail closed: a Secret that lost its key must not leave the service open to all.
        if value is None and not info.data.get("grpc_allow_unauthenticated", False):
            raise ValueError(
                "is required: set it, or set GRPC_ALLOW_UNAUTHENTICATED=true to accept every "
                "caller (only where nobody else can reach the ingress)"
            )
        return value

    @field_validator("grpc_tls_key")
    @classmethod
    def _tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        cert = info.data.get("grpc_tls_cert")
        if (value is None) != (cert is None):
            raise ValueError("GRPC_TLS_CERT and GRPC_TLS_KEY are set together or not at all")
        if value is not None and cert is not None:
            import ssl

            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, value)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"with GRPC_TLS_CERT, not a PEM certificate and its private key ({exc})"
                ) from None
        return value

    @property
    def tls(self) -> tuple[bytes, bytes] | None:
        """The PEM private key and certificate chain the ingress serves TLS with, or None
        (plain h2c, as inside a mesh that terminates TLS itself)."""
        if self.grpc_tls_cert is None or self.grpc_tls_key is None:
            return None
        return self.grpc_tls_key.read_bytes(), self.grpc_tls_cert.read_bytes()

    @property
    def listen_port(self) -> int:
        """`PORT` when Knative sets it, else `GRPC_PORT`."""
        return self.port or self.grpc_port

    @model_validator(mode="after")
    def _ports_differ(self) -> Self:
        if self.http_port is not None and self.http_port == self.listen_port:
            raise ValueError(
                f"HTTP_PORT must differ from the gRPC port ({self.listen_port}: "
                f"{'PORT' if self.port else 'GRPC_PORT'})"
            )
        return self


OSM_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
OSM_ATTRIBUTION = (
    '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors'
)


class ReportSettings(SettingsGroup):
    """The report page's map (status): where its tiles come from, and whose they are."""

    map_tile_url: str = OSM_TILES
    """A tile URL template ({z}/{x}/{y}, optionally {s} and {r}); `none`: no tiles at all."""
    map_tile_attribution: str = OSM_ATTRIBUTION
    """Shown in the map's corner (HTML, as tile providers give it)."""

    @field_validator("map_tile_url")
    @classmethod
    def _tile_template(cls, value: str) -> str:
        if value.lower() == "none":
            return "none"
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            raise ValueError("must be an http(s) URL template, or none")
        missing = [part for part in ("{z}", "{x}", "{y}") if part not in value]
        if missing:
            raise ValueError(f"must hold {', '.join(missing)} (e.g. {OSM_TILES})")
        return value

    @property
    def tiles(self) -> str | None:
        """The tile URL template, None when the map has no tiles."""
        return None if self.map_tile_url == "none" else self.map_tile_url


class UpstreamSettings(SettingsGroup):
    """The functions the ingress adapts to gRPC, and how long it waits for them."""

    submit_url: AnyHttpUrl
    status_url: AnyHttpUrl
    upstream_timeout_seconds: PositiveFloat = 20.0


class ClientSettings(SettingsGroup):
    """The command-line client (`otel-worker submit/status/jobs`): where the ingress is, and
    whether it is reached over TLS (verified against INGRESS_CA_FILE, else the system's
    roots)."""

    ingress_address: str = "127.0.0.1:50051"
    ingress_tls: bool = False
    ingress_ca_file: FilePath | None = None
    grpc_auth_token: BearerToken = None
    client_timeout_seconds: PositiveFloat = 30.0


class TelemetrySettings(SettingsGroup):
    """Logging and OpenTelemetry export (no endpoint: nothing leaves the process)."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = None
    otel_service_name: str = "otel-worker"
    otel_traces_sampler: Literal[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ] = "parentbased_always_on"
    otel_traces_sampler_arg: Annotated[float, Field(ge=0, le=1)] = 1.0
    metrics_prometheus: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class FaultSettings(SettingsGroup):
    """Test-only fault injection, never set in a deployment: the reliability tests stop
    compute with SIGKILL at a named point of an attempt (`shared.faults`)."""

    test_fault_kill_at: Literal["before_upload", "after_upload", "after_complete"] | None = None


GROUPS: dict[str, type[SettingsGroup]] = {
    "database": DatabaseSettings,
    "analysis": AnalysisSettings,
    "storage": StorageSettings,
    "jobs": JobSettings,
    "admission": AdmissionSettings,
    "waits": WaitSettings,
    "events": EventSettings,
    "http": HttpServerSettings,
    "grpc": GrpcSettings,
    "report": ReportSettings,
    "upstream": UpstreamSettings,
    "client": ClientSettings,
    "telemetry": TelemetrySettings,
    "faults": FaultSettings,
}
"""Every settings group by a short name (for `otel-worker config` and documentation)."""


def redact_url(url: str) -> str:
    """`url` with its credentials hidden: the user information and every query value (an
    OTLP endpoint may carry a key in either) become `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}=***" if sep else name
        for name, sep, _ in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def variable_names() -> set[str]:
    """The environment variable of every setting."""
    return {name.upper() for group in GROUPS.values() for name in group.model_fields}


G = TypeVar("G", bound=SettingsGroup)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = field.upper() if field else "configuration"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required but not set"
        problems.append(f"{name}: {message}")
    return "; ".join(problems)


@functools.cache
def load(group: type[G]) -> G:
    """Build one settings group from the environment, once per process.

    Raises `ConfigError` naming every invalid or missing variable.
    """
    try:
        return group()
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc)}") from None


def require(process: str, *groups: type[SettingsGroup]) -> None:
    """Validate `groups` at start-up; on a bad value, exit with the variable's name (status 2)
    rather than fail later inside a request."""
    try:
        for group in groups:
            load(group)
    except ConfigError as exc:
        sys.stderr.write(f"{process}: {exc}\n")
        raise SystemExit(2) from None
