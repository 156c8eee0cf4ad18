"""Settings: defaults, every validation rule, and errors that name the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import config
from shared.cli import main as cli_main
from shared.dev.stack import REPO_ROOT
from tests.conftest import make_certificate


def _load_error(group: type[config.SettingsGroup]) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.load(group)
    return str(info.value)


def test_defaults_keep_the_original_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "true")
    analysis = config.load(config.AnalysisSettings)
    assert (analysis.home_latitude, analysis.home_longitude) == (40.736097, -74.039373)
    assert analysis.away_threshold_km == 0.5
    assert analysis.home_timezone == "America/New_York"
    assert config.load(config.GrpcSettings).listen_port == 50051


def test_each_group_is_built_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    first = config.load(config.AnalysisSettings)
    monkeypatch.setenv("HOME_LATITUDE", "10")
    assert config.load(config.AnalysisSettings) is first


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HOME_LATITUDE", "91", "HOME_LATITUDE"),
        ("HOME_LATITUDE", "north", "HOME_LATITUDE"),
        ("HOME_LONGITUDE", "-180.5", "HOME_LONGITUDE"),
        ("HOME_TIMEZONE", "Mars/Olympus_Mons", "HOME_TIMEZONE: unknown time zone"),
        ("HOME_TIMEZONE", "localtime", "HOME_TIMEZONE: unknown time zone"),
        ("AWAY_THRESHOLD_KM", "0", "AWAY_THRESHOLD_KM"),
        ("HOME_ENTER_KM", "0.5", "HOME_ENTER_KM must be smaller than AWAY_THRESHOLD_KM"),
        ("MAX_ACCURACY_M", "-3", "MAX_ACCURACY_M"),
        ("MAX_GAP_MINUTES", "0", "MAX_GAP_MINUTES"),
    ],
)
def test_analysis_rules_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert expected in _load_error(config.AnalysisSettings)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PRESIGN_EXPIRY_SECONDS", "604801"),
        ("PRESIGN_EXPIRY_SECONDS", "0"),
        ("MINIO_ENDPOINT", "http://minio:9000"),
        ("MINIO_PUBLIC_ENDPOINT", "files.example.org/minio"),
        ("MINIO_BUCKET", "Not_A_Bucket"),
        ("MINIO_SECURE", "perhaps"),
        ("MAX_CSV_ROWS", "0"),
    ],
)
def test_storage_rules_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", "k")
    monkeypatch.setenv("MINIO_SECRET_KEY", "s")
    monkeypatch.setenv(variable, value)
    assert variable in _load_error(config.StorageSettings)


def test_presign_expiry_of_exactly_seven_days_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", "k")
    monkeypatch.setenv("MINIO_SECRET_KEY", "s")
    monkeypatch.setenv("PRESIGN_EXPIRY_SECONDS", "604800")
    assert config.load(config.StorageSettings).presign_expiry_seconds == 604800


def test_missing_credentials_are_named() -> None:
    message = _load_error(config.StorageSettings)
    assert "MINIO_ACCESS_KEY: is required but not set" in message
    assert "MINIO_SECRET_KEY: is required but not set" in message


@pytest.mark.parametrize(
    ("public", "secure", "expected"),
    [
        (None, "false", ("minio.storage.svc:9000", False)),
        (None, "true", ("minio.storage.svc:9000", True)),
        ("files.example.org", "false", ("files.example.org", False)),
        ("https://files.example.org", "false", ("files.example.org", True)),
        ("http://192.168.1.20:9000/", "true", ("192.168.1.20:9000", False)),
    ],
)
def test_public_endpoint_host_and_scheme(
    monkeypatch: pytest.MonkeyPatch, public: str | None, secure: str, expected: tuple[str, bool]
) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", "k")
    monkeypatch.setenv("MINIO_SECRET_KEY", "s")
    monkeypatch.setenv("MINIO_ENDPOINT", "minio.storage.svc:9000")
    monkeypatch.setenv("MINIO_SECURE", secure)
    if public:
        monkeypatch.setenv("MINIO_PUBLIC_ENDPOINT", public)
    assert config.load(config.StorageSettings).public_host == expected


@pytest.mark.parametrize(
    ("group", "variable", "value"),
    [
        (config.DatabaseSettings, "POSTGRES_PORT", "70000"),
        (config.DatabaseSettings, "POSTGRES_PORT", "five"),
        (config.DatabaseSettings, "DATABASE_URL", "mysql://x"),
        (config.DatabaseSettings, "JOBS_SCHEMA", "jobs; drop table x"),
        (config.GrpcSettings, "GRPC_PORT", "0"),
        (config.GrpcSettings, "PORT", "65536"),
        (config.HttpServerSettings, "PORT", "-1"),
        (config.JobSettings, "JOB_MAX_ATTEMPTS", "0"),
        (config.JobSettings, "MAX_RANGE_DAYS", "400"),
        (config.EventSettings, "K_SINK", "not a url"),
        (config.TelemetrySettings, "LOG_LEVEL", "chatty"),
        (config.TelemetrySettings, "OTEL_TRACES_SAMPLER", "sometimes"),
    ],
)
def test_other_rules_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, group: type[config.SettingsGroup], variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert _load_error(group).startswith(f"invalid configuration: {variable}:")


def test_the_download_port_must_differ_from_the_grpc_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("HTTP_PORT", "50051")
    assert "HTTP_PORT must differ from the gRPC port (50051: GRPC_PORT)" in _load_error(
        config.GrpcSettings
    )
    config.load.cache_clear()
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("HTTP_PORT", "8080")
    assert "(8080: PORT)" in _load_error(config.GrpcSettings)
    config.load.cache_clear()
    monkeypatch.setenv("HTTP_PORT", "9090")
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "maybe")
    assert _load_error(config.GrpcSettings).startswith(
        "invalid configuration: GRPC_ALLOW_UNAUTHENTICATED:"
    )


def test_upstream_urls_are_required_only_by_the_ingress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "true")
    message = _load_error(config.UpstreamSettings)
    assert "SUBMIT_URL" in message
    assert "STATUS_URL" in message
    # Processes that do not talk to the functions load without them.
    config.load(config.GrpcSettings)
    config.load(config.DatabaseSettings)


def test_conninfo_from_parts_escapes_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db.local")
    monkeypatch.setenv("POSTGRES_PORT", "6432")
    monkeypatch.setenv("POSTGRES_DB", "owntracks")
    monkeypatch.setenv("POSTGRES_USER", "app")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss/word")
    conninfo = config.load(config.DatabaseSettings).conninfo()
    assert conninfo == "postgresql://app:p%40ss%2Fword@db.local:6432/owntracks"


def test_database_url_wins_over_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h:1/d")
    monkeypatch.setenv("POSTGRES_HOST", "ignored")
    assert config.load(config.DatabaseSettings).conninfo() == "postgresql://u@h:1/d"


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("HOME_LATITUDE=51.5\nHOME_LONGITUDE=-0.12\n")
    monkeypatch.setenv("HOME_LONGITUDE", "2.35")
    analysis = config.load(config.AnalysisSettings)
    assert analysis.home_latitude == 51.5
    assert analysis.home_longitude == 2.35


def test_cli_reports_bad_config_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME_TIMEZONE", "Nowhere/Land")
    assert cli_main(["config", "analysis"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("otel-worker config: [analysis] invalid configuration: HOME_TIMEZONE")
    assert "Traceback" not in err


def test_cli_prints_settings_with_secrets_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("MINIO_SECRET_KEY", "very-secret-value")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@db.local:6432/owntracks")
    assert cli_main(["config", "storage", "database"]) == 0
    out = capsys.readouterr().out
    assert "MINIO_BUCKET = otel-worker" in out
    assert "DATABASE_URL = **********" in out
    for secret in ("very-secret-value", "AKIDEXAMPLE", "hunter2"):
        assert secret not in out


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    text = (REPO_ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert documented == config.variable_names()


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Secret with GRPC_AUTH_TOKEN: "" must not turn auth on with an empty token.
    monkeypatch.setenv("GRPC_AUTH_TOKEN", "")
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "true")
    monkeypatch.setenv("GRPC_PORT", "")
    monkeypatch.setenv("K_SINK", "")
    assert config.load(config.GrpcSettings).grpc_auth_token is None
    assert config.load(config.GrpcSettings).grpc_port == 50051
    assert config.load(config.EventSettings).k_sink is None


@pytest.mark.parametrize("group", [config.GrpcSettings, config.ClientSettings])
def test_the_bearer_token_loses_surrounding_whitespace(
    monkeypatch: pytest.MonkeyPatch, group: type[config.GrpcSettings | config.ClientSettings]
) -> None:
    # A Secret made from a file (`--from-file`) keeps the file's last newline.
    monkeypatch.setenv("GRPC_AUTH_TOKEN", " s3cret-token\r\n")
    token = config.load(group).grpc_auth_token
    assert token is not None
    assert token.get_secret_value() == "s3cret-token"
    config.load.cache_clear()
    monkeypatch.setenv("GRPC_AUTH_TOKEN", "\n")
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "true")
    assert config.load(group).grpc_auth_token is None


@pytest.mark.parametrize("token", ["s3cret\ntoken", "s3crét", "tab\there"])
def test_a_bearer_token_grpc_cannot_carry_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("GRPC_AUTH_TOKEN", token)
    message = _load_error(config.GrpcSettings)
    assert "GRPC_AUTH_TOKEN: must be printable ASCII" in message
    assert token not in message


@pytest.mark.parametrize(
    ("variable", "value", "group"),
    [
        ("MAX_GAP_MINUTES", "inf", config.AnalysisSettings),
        ("JITTER_RADIUS_M", "Infinity", config.AnalysisSettings),
        ("MAX_SPEED_KMH", "nan", config.AnalysisSettings),
        ("UPSTREAM_TIMEOUT_SECONDS", "inf", config.UpstreamSettings),
        ("DB_CONNECT_TIMEOUT_SECONDS", "NaN", config.DatabaseSettings),
        ("DB_STARTUP_RETRY_SECONDS", "inf", config.DatabaseSettings),
        ("STAY_RADIUS_M", "inf", config.AnalysisSettings),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, group: type[config.SettingsGroup]
) -> None:
    monkeypatch.setenv("SUBMIT_URL", "http://submit")
    monkeypatch.setenv("STATUS_URL", "http://status")
    monkeypatch.setenv(variable, value)
    assert f"{variable}: Input should be a finite number" in _load_error(group)


def test_a_connection_string_that_does_not_parse_is_reported_without_its_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@[db.local/owntracks")
    assert cli_main(["config", "database"]) == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL: is not a valid connection URI" in err
    assert "hunter2" not in err
    assert "Traceback" not in err


def test_cli_masks_credentials_inside_urls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "https://tenant:pa55word@otlp.example:4318/?api-key=k3y"
    )
    assert cli_main(["config", "telemetry"]) == 0
    out = capsys.readouterr().out
    assert "OTEL_EXPORTER_OTLP_ENDPOINT = https://***@otlp.example:4318/?api-key=***" in out
    for secret in ("tenant", "pa55word", "k3y"):
        assert secret not in out


@pytest.mark.parametrize("token", [None, "", "  \n"])
def test_the_ingress_fails_closed_without_a_token(
    monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    if token is not None:
        monkeypatch.setenv("GRPC_AUTH_TOKEN", token)
    message = _load_error(config.GrpcSettings)
    assert message.startswith("invalid configuration: GRPC_AUTH_TOKEN: is required")
    assert "GRPC_ALLOW_UNAUTHENTICATED=true" in message
    config.load.cache_clear()
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "false")
    assert "GRPC_AUTH_TOKEN: is required" in _load_error(config.GrpcSettings)
    config.load.cache_clear()
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "true")
    settings = config.load(config.GrpcSettings)
    assert (settings.grpc_auth_token, settings.grpc_allow_unauthenticated) == (None, True)


def test_allowing_unauthenticated_access_takes_a_boolean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ALLOW_UNAUTHENTICATED", "sure")
    assert "GRPC_ALLOW_UNAUTHENTICATED: Input should be a valid boolean" in _load_error(
        config.GrpcSettings
    )


def test_tls_takes_a_certificate_and_its_key_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("GRPC_AUTH_TOKEN", "t")
    monkeypatch.setenv("GRPC_TLS_CERT", str(cert))
    assert "GRPC_TLS_KEY: GRPC_TLS_CERT and GRPC_TLS_KEY are set together" in _load_error(
        config.GrpcSettings
    )
    config.load.cache_clear()
    monkeypatch.setenv("GRPC_TLS_KEY", str(tmp_path / "missing.key"))
    assert "GRPC_TLS_KEY: Path does not point to a file" in _load_error(config.GrpcSettings)
    config.load.cache_clear()
    monkeypatch.setenv("GRPC_TLS_KEY", str(cert))  # a certificate is no key
    assert "GRPC_TLS_KEY: with GRPC_TLS_CERT, not a PEM certificate and its private key" in (
        _load_error(config.GrpcSettings)
    )
    config.load.cache_clear()
    monkeypatch.setenv("GRPC_TLS_KEY", str(key))
    assert config.load(config.GrpcSettings).tls == (key.read_bytes(), cert.read_bytes())


def test_places_file_is_read_and_a_bad_one_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = tmp_path / "places.json"
    good.write_text('[{"name": "Office", "latitude": 40.7, "longitude": -74.0, "radius_m": 80}]')
    monkeypatch.setenv("PLACES_FILE", str(good))
    monkeypatch.setenv("STAY_MIN_MINUTES", "7")
    params = config.load(config.AnalysisSettings).engine_params()
    assert [(p.name, p.radius_m) for p in params.places] == [("Office", 80.0)]
    assert params.stay_min_minutes == 7
    config.load.cache_clear()
    monkeypatch.setenv("PLACES_FILE", str(tmp_path / "missing.yaml"))
    message = _load_error(config.AnalysisSettings)
    assert "PLACES_FILE" in message
    assert "missing.yaml" in message
    for radius in (".inf", ".nan"):
        config.load.cache_clear()
        endless = tmp_path / "endless.yaml"
        endless.write_text(
            f"- name: Everywhere\n  latitude: 1\n  longitude: 2\n  radius_m: {radius}\n"
        )
        monkeypatch.setenv("PLACES_FILE", str(endless))
        message = _load_error(config.AnalysisSettings)
        assert "PLACES_FILE" in message
        assert "radius_m" in message
