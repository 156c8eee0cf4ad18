"""The Kubernetes and Knative manifests, held against the code they deploy.

Kubernetes cannot run here, so every manifest is parsed into strict models of the fields
we use (a misspelt field fails), cross-checked with the code (event types, settings,
ports, probe paths, commands), built with `kubectl kustomize`, validated against the
Kubernetes schemas, linted, and the Dockerfile is linted too.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import posixpath
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jsonschema
import jsonschema.protocols
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings

from shared import config, events
from shared.cli import build_parser
from shared.dev.manifests import (
    BASE,
    LEASE_MARGIN_SECONDS,
    Broker,
    NetworkPolicy,
    NetworkPolicyPeer,
    ObjectMeta,
    Trigger,
    documents,
    load_eventing,
    retry_window,
)
from shared.dev.stack import REPO_ROOT

KNATIVE = REPO_ROOT / "knative"
CLUSTERS = sorted(p.parent for p in (KNATIVE / "clusters").rglob("kustomization.yaml"))
COMPAT = KNATIVE / "apps" / "compat" / "otel-worker"
OVERLAYS = [COMPAT, *CLUSTERS]
BIN = Path(sys.executable).parent
# Variables the runtime reads besides our settings.
RUNTIME_VARIABLES = {"FUNCTION_SOURCE", "FUNCTION_TARGET", "THREADS"}
HTTP_FUNCTIONS = {"submit", "compute", "status"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class SecretKeyRef(_Strict):
    name: str
    key: str
    optional: bool = False


class ValueFrom(_Strict):
    secret_key_ref: SecretKeyRef = Field(alias="secretKeyRef")


class EnvVar(_Strict):
    name: str
    value: str | None = None
    value_from: ValueFrom | None = Field(default=None, alias="valueFrom")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        assert (self.value is None) != (self.value_from is None), f"{self.name}: value or valueFrom"
        return self


class Ref(_Strict):
    name: str


class EnvFrom(_Strict):
    # No secretRef: a workload names the keys of the Secret it uses (secretKeyRef).
    config_map_ref: Ref = Field(alias="configMapRef")


class HttpGet(_Strict):
    path: str
    port: int = Field(ge=1, le=65535)


class GrpcProbe(_Strict):
    # Required: Knative fills in no port for a gRPC probe, and port 0 is not admitted.
    port: int = Field(ge=1, le=65535)
    service: str


class Probe(_Strict):
    http_get: HttpGet | None = Field(default=None, alias="httpGet")
    grpc: GrpcProbe | None = None
    period_seconds: int = Field(alias="periodSeconds")
    timeout_seconds: int | None = Field(default=None, alias="timeoutSeconds")
    failure_threshold: int | None = Field(default=None, alias="failureThreshold")


class Port(_Strict):
    name: Literal["http1", "h2c"]
    container_port: int = Field(alias="containerPort")


class Resources(_Strict):
    requests: dict[Literal["cpu", "memory"], str]
    limits: dict[Literal["cpu", "memory"], str]


class Capabilities(_Strict):
    drop: list[str]


class Seccomp(_Strict):
    type: Literal["RuntimeDefault"]


class SecurityContext(_Strict):
    run_as_non_root: Literal[True] = Field(alias="runAsNonRoot")
    run_as_user: int = Field(alias="runAsUser", gt=0)
    read_only_root_filesystem: Literal[True] = Field(alias="readOnlyRootFilesystem")
    allow_privilege_escalation: Literal[False] = Field(alias="allowPrivilegeEscalation")
    capabilities: Capabilities
    seccomp_profile: Seccomp = Field(alias="seccompProfile")


class VolumeMount(_Strict):
    name: str
    mount_path: str = Field(alias="mountPath")


class Container(_Strict):
    name: str
    image: str
    command: list[str] | None = None
    ports: list[Port] | None = None
    env: list[EnvVar] = Field(default_factory=list)
    env_from: list[EnvFrom] = Field(alias="envFrom")
    readiness_probe: Probe | None = Field(default=None, alias="readinessProbe")
    liveness_probe: Probe | None = Field(default=None, alias="livenessProbe")
    resources: Resources
    security_context: SecurityContext = Field(alias="securityContext")
    volume_mounts: list[VolumeMount] = Field(default_factory=list, alias="volumeMounts")


class EmptyDir(_Strict):
    size_limit: str = Field(alias="sizeLimit")


class Volume(_Strict):
    name: str
    empty_dir: EmptyDir = Field(alias="emptyDir")


class RevisionSpec(_Strict):
    automount_service_account_token: Literal[False] = Field(alias="automountServiceAccountToken")
    container_concurrency: int = Field(alias="containerConcurrency", ge=1)
    timeout_seconds: int = Field(alias="timeoutSeconds", ge=1)
    containers: list[Container] = Field(min_length=1, max_length=1)
    volumes: list[Volume] = Field(default_factory=list)


class TemplateMeta(_Strict):
    annotations: dict[str, str]


class Template(_Strict):
    metadata: TemplateMeta
    spec: RevisionSpec


class ServiceSpec(_Strict):
    template: Template


class KnativeService(_Strict):
    api_version: Literal["serving.knative.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["Service"]
    metadata: ObjectMeta
    spec: ServiceSpec


class SinkSubject(_Strict):
    api_version: str = Field(alias="apiVersion")
    kind: str
    name: str | None = None
    selector: dict[str, dict[str, str]] | None = None


class SinkRef(_Strict):
    ref: dict[str, str]


class SinkBindingSpec(_Strict):
    subject: SinkSubject
    sink: SinkRef


class SinkBinding(_Strict):
    api_version: Literal["sources.knative.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["SinkBinding"]
    metadata: ObjectMeta
    spec: SinkBindingSpec


class PodSpec(_Strict):
    automount_service_account_token: Literal[False] = Field(alias="automountServiceAccountToken")
    restart_policy: Literal["Never", "OnFailure"] = Field(alias="restartPolicy")
    containers: list[Container]


class PodTemplate(_Strict):
    metadata: ObjectMeta | dict[str, Any] | None = None
    spec: PodSpec


class JobSpec(_Strict):
    backoff_limit: int = Field(alias="backoffLimit")
    active_deadline_seconds: int = Field(alias="activeDeadlineSeconds")
    ttl_seconds_after_finished: int | None = Field(default=None, alias="ttlSecondsAfterFinished")
    template: PodTemplate


class BatchJob(_Strict):
    api_version: Literal["batch/v1"] = Field(alias="apiVersion")
    kind: Literal["Job"]
    metadata: ObjectMeta
    spec: JobSpec


class TemplateLabels(_Strict):
    labels: dict[str, str]


class CronJobTemplate(_Strict):
    metadata: TemplateLabels | None = None
    spec: JobSpec


class CronJobSpec(_Strict):
    schedule: str
    time_zone: str | None = Field(default=None, alias="timeZone")
    concurrency_policy: Literal["Forbid"] = Field(alias="concurrencyPolicy")
    successful_jobs_history_limit: int = Field(alias="successfulJobsHistoryLimit")
    failed_jobs_history_limit: int = Field(alias="failedJobsHistoryLimit")
    job_template: CronJobTemplate = Field(alias="jobTemplate")


class CronJob(_Strict):
    api_version: Literal["batch/v1"] = Field(alias="apiVersion")
    kind: Literal["CronJob"]
    metadata: ObjectMeta
    spec: CronJobSpec


class ConfigMap(_Strict):
    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["ConfigMap"]
    metadata: ObjectMeta
    data: dict[str, str]


class Secret(_Strict):
    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Secret"]
    metadata: ObjectMeta
    type: Literal["Opaque"]
    string_data: dict[str, str] = Field(alias="stringData")


class Namespace(_Strict):
    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Namespace"]
    metadata: ObjectMeta


MODELS: dict[str, type[BaseModel]] = {
    "Service": KnativeService,
    "SinkBinding": SinkBinding,
    "Job": BatchJob,
    "CronJob": CronJob,
    "ConfigMap": ConfigMap,
    "Secret": Secret,
    "Namespace": Namespace,
    "Broker": Broker,
    "Trigger": Trigger,
    "NetworkPolicy": NetworkPolicy,
}


def _base() -> dict[str, list[Any]]:
    """Every resource of the base, by kind, parsed strictly."""
    resources: dict[str, list[Any]] = {}
    for path, document in documents(BASE):
        if document.get("kind") == "Kustomization":
            continue
        model = MODELS[document["kind"]]
        resources.setdefault(document["kind"], []).append(model.model_validate(document))
        assert path.suffix == ".yaml"
    return resources


@pytest.fixture(scope="module")
def base() -> dict[str, list[Any]]:
    return _base()


def _services(base: dict[str, list[Any]]) -> dict[str, KnativeService]:
    return {s.metadata.name: s for s in base["Service"]}


def _configmap_keys(base: dict[str, list[Any]]) -> set[str]:
    return {key for cm in base["ConfigMap"] for key in cm.data}


def _secret_keys(base: dict[str, list[Any]]) -> set[str]:
    return {key for secret in base["Secret"] for key in secret.string_data}


def _containers(base: dict[str, list[Any]]) -> dict[str, Container]:
    """The container of every workload: each Service, the migration Job, each CronJob
    (sweep, refresh, nightly)."""
    found = {name: s.spec.template.spec.containers[0] for name, s in _services(base).items()}
    (migrate,) = base["Job"]
    found["migrate"] = migrate.spec.template.spec.containers[0]
    for cron in base["CronJob"]:
        name = cron.metadata.name.removeprefix("otel-worker-")
        found[name] = cron.spec.job_template.spec.template.spec.containers[0]
    return found


def _from_secret(container: Container) -> dict[str, SecretKeyRef]:
    """Variable name -> the Secret key it is read from."""
    return {var.name: var.value_from.secret_key_ref for var in container.env if var.value_from}


def test_every_manifest_parses_strictly(base: dict[str, list[Any]]) -> None:
    assert set(base) == set(MODELS)
    assert set(_services(base)) == {*HTTP_FUNCTIONS, "ingress"}


def test_a_misspelt_field_is_caught() -> None:
    service = yaml.safe_load((BASE / "service-submit.yaml").read_text())
    service["spec"]["template"]["spec"]["containerConcurency"] = 8
    with pytest.raises(ValueError, match="containerConcurency"):
        KnativeService.model_validate(service)


def test_trigger_filters_name_types_the_code_handles(base: dict[str, list[Any]]) -> None:
    _, triggers = load_eventing()
    handled = {
        events.DISTANCE_REQUESTED: "submit",
        events.JOB_QUEUED: "compute",
        events.DAY_REQUESTED: "compute",
    }
    for trigger in triggers:
        event_type = trigger.spec.filter.attributes["type"]
        assert event_type in handled, f"{trigger.metadata.name} filters on unknown {event_type}"
        assert trigger.spec.subscriber.ref is not None
        assert trigger.spec.subscriber.ref.name == handled[event_type]
        assert trigger.spec.subscriber.ref.name in _services(base)


def test_every_emitted_type_has_a_consumer_or_is_outbound() -> None:
    _, triggers = load_eventing()
    consumed = {t.spec.filter.attributes["type"] for t in triggers}
    for event_type in events.EMITTED:
        assert event_type in consumed or event_type in events.OUTBOUND, event_type
    assert not set(events.OUTBOUND) & consumed


def test_every_variable_set_is_a_known_setting(base: dict[str, list[Any]]) -> None:
    known = config.variable_names() | RUNTIME_VARIABLES
    containers = _containers(base).values()
    assert {var.name for c in containers for var in c.env} | _configmap_keys(base) <= known
    # The Secret's example holds every key a pod cannot start without, and no key unread.
    refs = [ref for c in containers for ref in _from_secret(c).values()]
    assert {ref.name for ref in refs} == {"otel-worker"}
    required = {ref.key for ref in refs if not ref.optional}
    assert required <= _secret_keys(base) <= {ref.key for ref in refs}


def _settings_used(source: Path, function: str | None = None) -> list[type[BaseSettings]]:
    """The settings groups (`config.<Name>Settings`) that `source`, or its `function`,
    names: what that process loads."""
    tree: ast.AST = ast.parse(source.read_text())
    if function is not None:
        (tree,) = (
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == function
        )
    names = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "config"
        and node.attr.endswith("Settings")
    }
    return [getattr(config, name) for name in sorted(names)]


# What each function loads, read from its code (its `config.require` and `config.load`).
REQUIRED = {
    name: _settings_used(REPO_ROOT / "functions" / name / "main.py")
    for name in (*sorted(HTTP_FUNCTIONS), "ingress")
}


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_required_setting_is_provided(base: dict[str, list[Any]], name: str) -> None:
    container = _services(base)[name].spec.template.spec.containers[0]
    provided = {v.name for v in container.env} | _configmap_keys(base)
    assert {ref.config_map_ref.name for ref in container.env_from} == {"otel-worker"}
    for group in REQUIRED[name]:
        for field_name, field in group.model_fields.items():
            if field.is_required():
                assert field_name.upper() in provided, f"{name} lacks {field_name.upper()}"


# The settings that are credentials: they come from the Secret, never the ConfigMap.
CREDENTIALS = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "DATABASE_URL",
    "DATABASE_LISTEN_URL",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "GRPC_AUTH_TOKEN",
}
# The settings each workload reads, the Jobs' from their CLI commands: its credentials are
# exactly theirs.
SETTINGS = {
    **REQUIRED,
    "sweep": _settings_used(REPO_ROOT / "shared" / "cli.py", "_sweep"),
    "refresh": _settings_used(REPO_ROOT / "shared" / "cli.py", "_refresh"),
    "nightly": _settings_used(REPO_ROOT / "shared" / "cli.py", "_nightly"),
    "migrate": _settings_used(REPO_ROOT / "shared" / "cli.py", "_migrate"),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_workload_gets_only_the_credentials_it_uses(
    base: dict[str, list[Any]], name: str
) -> None:
    """No workload sees the whole Secret: the ingress holds no database or MinIO keys, and
    only the credentials of settings the workload reads reach it."""
    assert config.variable_names() >= CREDENTIALS
    assert not CREDENTIALS & _configmap_keys(base)
    refs = _from_secret(_containers(base)[name])
    used = {field.upper() for group in SETTINGS[name] for field in group.model_fields}
    assert set(refs) == used & CREDENTIALS
    # Optional exactly where the setting is: a Secret without them still starts the pod.
    assert {var for var, ref in refs.items() if ref.optional} == (
        {"DATABASE_URL", "DATABASE_LISTEN_URL", "GRPC_AUTH_TOKEN"} & set(refs)
    )


def test_status_reads_objects_with_an_identity_of_its_own(base: dict[str, list[Any]]) -> None:
    containers = _containers(base)
    compute, status = _from_secret(containers["compute"]), _from_secret(containers["status"])
    assert {var: ref.key for var, ref in compute.items() if var.startswith("MINIO_")} == {
        "MINIO_ACCESS_KEY": "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY": "MINIO_SECRET_KEY",
    }
    assert {var: ref.key for var, ref in status.items() if var.startswith("MINIO_")} == {
        "MINIO_ACCESS_KEY": "MINIO_READ_ACCESS_KEY",
        "MINIO_SECRET_KEY": "MINIO_READ_SECRET_KEY",
    }


def _defines(source: Path, function: str) -> bool:
    tree = ast.parse(source.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body)


@pytest.mark.parametrize("name", sorted(HTTP_FUNCTIONS))
def test_http_functions_point_at_their_code_and_probes(
    base: dict[str, list[Any]], name: str
) -> None:
    spec = _services(base)[name].spec.template.spec
    container = spec.containers[0]
    env = {v.name: v.value for v in container.env}
    source = Path(env["FUNCTION_SOURCE"].replace("/app/", f"{REPO_ROOT}/", 1))
    assert source.exists()
    assert env["FUNCTION_TARGET"] == name
    assert _defines(source, name)
    assert container.ports == [Port(name="http1", containerPort=8080)]
    assert container.readiness_probe
    assert container.readiness_probe.http_get
    assert container.readiness_probe.http_get.path == "/readyz"
    assert container.liveness_probe
    assert container.liveness_probe.http_get
    assert container.liveness_probe.http_get.path == "/healthz"
    # One gunicorn worker, THREADS threads, one pooled connection per thread; compute keeps
    # a thread free for the probes.
    spare = 1 if name == "compute" else 0
    assert env["THREADS"] == env["DB_POOL_MAX_SIZE"] == str(spec.container_concurrency + spare)


def test_compute_runs_one_job_per_pod_and_answers_probes_beside_it(
    base: dict[str, list[Any]],
) -> None:
    """Two jobs at MAX_CSV_ROWS would need ~700 MB against the 512Mi limit and twice the CPU
    the timing chain assumes; the probes must not wait behind the job (1 s default timeout)."""
    compute = _services(base)["compute"].spec.template
    assert compute.spec.container_concurrency == 1
    assert compute.metadata.annotations["autoscaling.knative.dev/target"] == "1"
    container = compute.spec.containers[0]
    env = {v.name: v.value for v in container.env}
    assert int(env["THREADS"]) == compute.spec.container_concurrency + 1
    assert container.resources.limits["memory"] == "512Mi"
    for probe in (container.readiness_probe, container.liveness_probe):
        assert probe is not None
        assert probe.timeout_seconds is not None
        assert 1 < probe.timeout_seconds <= probe.period_seconds


def test_ingress_speaks_h2c_with_grpc_probes(base: dict[str, list[Any]]) -> None:
    container = _services(base)["ingress"].spec.template.spec.containers[0]
    assert container.command == ["python", "/app/functions/ingress/main.py"]
    assert (REPO_ROOT / "functions" / "ingress" / "main.py").exists()
    assert container.ports == [Port(name="h2c", containerPort=8080)]
    assert container.readiness_probe
    assert container.readiness_probe.grpc
    assert container.readiness_probe.grpc.service == ""
    assert container.liveness_probe
    assert container.liveness_probe.grpc
    # The port the ingress listens on (Knative's PORT is the h2c containerPort).
    for probe in (container.readiness_probe, container.liveness_probe):
        assert probe.grpc is not None
        assert probe.grpc.port == container.ports[0].container_port


def test_a_grpc_probe_without_its_port_is_refused() -> None:
    service = yaml.safe_load((BASE / "service-ingress.yaml").read_text())
    del service["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"]
    with pytest.raises(ValueError, match="port"):
        KnativeService.model_validate(service)


# Kinds a SinkBinding can inject into: they embed a pod template at spec.template.spec.
PODSPECABLE = {
    ("serving.knative.dev/v1", "Service"),
    ("batch/v1", "Job"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
}


def test_sink_bindings_reach_every_publisher(base: dict[str, list[Any]]) -> None:
    """submit, compute and every Job of each CronJob get K_SINK (a binding to the CronJob
    itself would inject nothing: it has no pod template of its own)."""
    bound: set[str] = set()
    for binding in base["SinkBinding"]:
        subject = binding.spec.subject
        assert (subject.api_version, subject.kind) in PODSPECABLE, binding.metadata.name
        assert binding.spec.sink.ref == {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "name": "otel-worker",
        }
        assert subject.selector is not None
        wanted = subject.selector["matchLabels"].items()
        if subject.kind == "Service":
            bound |= {
                name
                for name, service in _services(base).items()
                if wanted <= service.metadata.labels.items()
            }
        else:
            bound |= {
                cron.metadata.name
                for cron in base["CronJob"]
                if cron.spec.job_template.metadata
                and wanted <= cron.spec.job_template.metadata.labels.items()
            }
    assert bound == {
        "submit",
        "compute",
        "otel-worker-sweep",
        "otel-worker-refresh",
        "otel-worker-nightly",
    }


WAVE = "argocd.argoproj.io/sync-wave"


def _wave(resource: Any) -> int:
    return int(resource.metadata.annotations.get(WAVE, "0"))


def test_sync_waves_create_what_is_referenced_first(base: dict[str, list[Any]]) -> None:
    """Argo CD applies a wave once the earlier ones are healthy, and reports a Broker or
    Trigger whose reference does not resolve as Degraded: referents go in earlier waves."""
    services = {name: _wave(s) for name, s in _services(base).items()}
    (broker,) = base["Broker"]
    (migrate,) = base["Job"]
    assert {_wave(cm) for cm in base["ConfigMap"]} == {0}
    assert 0 < _wave(migrate) < min(services.values())
    dead_letters = broker.spec.delivery.dead_letter_sink.ref
    assert services[dead_letters.name] < _wave(broker)
    for trigger in base["Trigger"]:
        assert trigger.spec.broker == broker.metadata.name
        assert _wave(broker) < _wave(trigger)
        for ref in (trigger.spec.subscriber.ref, trigger.spec.delivery.dead_letter_sink.ref):
            assert services[ref.name] < _wave(trigger), trigger.metadata.name
    for binding in base["SinkBinding"]:
        assert _wave(broker) < _wave(binding), binding.metadata.name
        if binding.spec.subject.kind == "Job":
            assert all(_wave(binding) < _wave(cron) for cron in base["CronJob"])


APPLICATION = KNATIVE / "clusters" / "k8s-pi5-cluster" / "otel-worker-application.yaml"


def _application() -> dict[str, Any]:
    application: dict[str, Any] = yaml.safe_load(APPLICATION.read_text())
    return application


def test_argo_cd_ignores_exactly_what_the_sink_bindings_inject(
    base: dict[str, list[Any]],
) -> None:
    """The Application's jq expression drops the env entries SinkBinding adds to a bound
    Service (K_SINK, K_CE_OVERRIDES, and K_CA_CERTS under TLS) and nothing else."""
    jq = shutil.which("jq")
    assert jq, "jq is needed: it is on these machines and on the CI runners"
    application = _application()
    (rule,) = [
        r
        for r in application["spec"]["ignoreDifferences"]
        if (r["group"], r["kind"]) == ("serving.knative.dev", "Service")
    ]
    desired = yaml.safe_load((BASE / "service-compute.yaml").read_text())
    live = yaml.safe_load((BASE / "service-compute.yaml").read_text())
    live["spec"]["template"]["spec"]["containers"][0]["env"] += [
        {"name": "K_SINK", "value": "http://broker-ingress.knative-eventing.svc/otel-worker"},
        {"name": "K_CA_CERTS", "value": "-----BEGIN CERTIFICATE-----"},
        {"name": "K_CE_OVERRIDES", "value": ""},
    ]
    for expression in rule["jqPathExpressions"]:
        live = json.loads(
            subprocess.run(
                [jq, "-c", f"del({expression})"],
                input=json.dumps(live),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    assert live == desired


def _documented_actions(doc: str, user: str) -> set[str]:
    """The S3 actions the policies DEPLOYMENT.md attaches to MinIO user `user` allow."""
    files = dict(re.findall(r"^mc admin policy create myminio (\S+) (\S+)$", doc, re.MULTILINE))
    attached = [
        policy
        for policies, who in re.findall(
            r"^mc admin policy attach myminio (.+) --user (\S+)$", doc, re.MULTILINE
        )
        if who == user
        for policy in policies.split()
    ]
    assert attached, f"no policy attached to {user}"
    allowed: set[str] = set()
    for policy in attached:
        (document,) = re.findall(
            rf"`{re.escape(files[policy])}`.*?\n\n```json\n(.*?)```", doc, re.S
        )
        allowed |= {
            action
            for statement in json.loads(document)["Statement"]
            for action in statement["Action"]
        }
    return allowed


def test_the_documented_minio_identities_write_and_read_apart() -> None:
    """compute's identity (the Secret's MINIO_ACCESS_KEY) only writes (and deletes what a
    cancelled attempt wrote); status's (MINIO_READ_ACCESS_KEY) only reads and lists, which
    presigned downloads need. The stack the tests run gives the functions SeaweedFS
    identities with the same rights (tests/stack.py)."""
    doc = (REPO_ROOT / "docs" / "DEPLOYMENT.md").read_text()
    users = {}
    for key in ("MINIO_ACCESS_KEY", "MINIO_READ_ACCESS_KEY"):
        (users[key],) = re.findall(rf"--from-literal={key}=(\S+) ", doc)
        assert users[key] in re.findall(r"^mc admin user add myminio (\S+) ", doc, re.MULTILINE)
    writer = _documented_actions(doc, users["MINIO_ACCESS_KEY"])
    reader = _documented_actions(doc, users["MINIO_READ_ACCESS_KEY"])
    assert writer == {"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"}
    # Listing too: without it MinIO answers a missing object with AccessDenied, not
    # NoSuchKey, and status would call an expired report a store failure.
    assert reader == {"s3:GetObject", "s3:ListBucket"}


def test_commands_of_jobs_are_cli_subcommands(base: dict[str, list[Any]]) -> None:
    parser = build_parser()
    commands = [j.spec.template.spec.containers[0].command for j in base["Job"]]
    commands += [
        c.spec.job_template.spec.template.spec.containers[0].command for c in base["CronJob"]
    ]
    assert sorted(c[1] for c in commands if c) == ["migrate", "nightly", "refresh", "sweep"]
    for command in commands:
        assert command is not None
        assert command[0] == "otel-worker"
        parser.parse_args(command[1:])


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def test_scale_to_zero_and_limits_as_planned(base: dict[str, list[Any]]) -> None:
    for name, service in _services(base).items():
        annotations = service.spec.template.metadata.annotations
        assert annotations["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
        assert annotations["autoscaling.knative.dev/min-scale"] == "0", name
        assert int(annotations["autoscaling.knative.dev/max-scale"]) >= 1
        assert (
            int(annotations["autoscaling.knative.dev/target"])
            <= service.spec.template.spec.container_concurrency
        )
        resources = service.spec.template.spec.containers[0].resources
        assert resources.limits["memory"] == "512Mi", name
        # A cold start imports for ~1 CPU-second: a whole core keeps it near 1 s of wall
        # time; small requests keep a scaled-from-zero pod schedulable anywhere.
        assert _millicores(resources.limits["cpu"]) >= 1000, name
        assert _millicores(resources.requests["cpu"]) <= 100, name
        assert service.metadata.labels["networking.knative.dev/visibility"] == "cluster-local"


def _seconds(delta: dt.timedelta | None) -> float:
    assert delta is not None
    return delta.total_seconds()


def _lease(base: dict[str, list[Any]]) -> int:
    return int(next(cm for cm in base["ConfigMap"]).data["JOB_LEASE_SECONDS"])


def test_timeouts_leases_and_retries_fit_together(base: dict[str, list[Any]]) -> None:
    """worst compute < delivery timeout < Service timeoutSeconds < lease."""
    _, triggers = load_eventing()
    compute_trigger = next(
        t for t in triggers if t.spec.subscriber.ref and t.spec.subscriber.ref.name == "compute"
    )
    delivery = compute_trigger.spec.delivery
    assert delivery is not None
    timeout = _seconds(delivery.timeout)
    service_timeout = _services(base)["compute"].spec.template.spec.timeout_seconds
    assert timeout < service_timeout < _lease(base)


def test_every_retry_window_outlasts_the_lease_with_margin(base: dict[str, list[Any]]) -> None:
    """Eventing waits backoffDelay * 2^n before retry n, from n = 0 (so `retry: 6` from 5 s
    spans 5+10+...+160 = 315 s, not 630): every Trigger's retries, its own or the Broker's,
    go on for LEASE_MARGIN_SECONDS past JOB_LEASE_SECONDS."""
    _, triggers = load_eventing()
    (broker,) = base["Broker"]
    lease = _lease(base)
    assert triggers
    for trigger in triggers:
        delivery = trigger.spec.delivery or broker.spec.delivery
        assert delivery is not None
        assert delivery.backoff_policy in {None, "exponential"}
        window = sum(_seconds(delivery.backoff_delay) * 2**n for n in range(delivery.retry or 0))
        assert window == retry_window(delivery)
        assert window >= lease + LEASE_MARGIN_SECONDS, (trigger.metadata.name, window, lease)
    # The documented figures are the manifests'.
    doc = (REPO_ROOT / "docs" / "DEPLOYMENT.md").read_text()
    assert f"| `JOB_LEASE_SECONDS` | {lease} s |" in doc
    for trigger in triggers:
        assert trigger.spec.delivery is not None
        assert f"= {retry_window(trigger.spec.delivery):g} s |" in doc, trigger.metadata.name


def test_every_delivery_times_out_before_its_service(base: dict[str, list[Any]]) -> None:
    """The broker gives up on a delivery before Knative cuts the request it is waiting for."""
    _, triggers = load_eventing()
    services = _services(base)
    checked = 0
    for trigger in triggers:
        ref = trigger.spec.subscriber.ref
        if ref is None or ref.name not in services or trigger.spec.delivery is None:
            continue
        timeout = _seconds(trigger.spec.delivery.timeout)
        assert timeout < services[ref.name].spec.template.spec.timeout_seconds, ref.name
        checked += 1
    assert checked == 3


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(KNATIVE)))
def test_kustomize_builds_and_core_resources_validate(folder: Path, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed: it is on these machines"
    built = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    resources = [r for r in yaml.safe_load_all(built) if r]
    kinds = {r["kind"] for r in resources}
    assert {"Service", "Broker", "Trigger", "CronJob", "Job", "ConfigMap"} <= kinds
    for resource in resources:
        assert resource["metadata"].get("namespace", "otel-worker") == "otel-worker"
        if resource["apiVersion"] in {"v1", "batch/v1", "apps/v1", "networking.k8s.io/v1"}:
            kubernetes_validate.validate(resource, "1.33.0", strict=True)
        if resource["apiVersion"] == "serving.knative.dev/v1":
            # Patches must leave each Service whole (image, env, probes, security).
            KnativeService.model_validate(resource)


def _build(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl
    built = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    return [r for r in yaml.safe_load_all(built) if r]


def test_the_nightly_runs_shortly_after_midnight_in_the_home_time_zone() -> None:
    """Its "yesterday" is HOME_TIMEZONE's: the CronJob must tick in that zone, within the
    first hour of the day (the base, without a zone, ticks in UTC)."""
    for folder in CLUSTERS:
        built = _build(folder)
        (home,) = [
            r["data"]["HOME_TIMEZONE"]
            for r in built
            if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "otel-worker"
        ]
        (nightly,) = [
            r
            for r in built
            if r["kind"] == "CronJob" and r["metadata"]["name"] == "otel-worker-nightly"
        ]
        assert nightly["spec"]["timeZone"] == home
        minute, hour, *every_day = nightly["spec"]["schedule"].split()
        assert (hour, every_day) == ("0", ["*", "*", "*"])
        assert 0 < int(minute) < 60


def test_the_overlay_exposes_only_the_ingress() -> None:
    """status has no authentication: it stays inside the cluster (DEPLOYMENT.md#exposure)."""
    for folder in CLUSTERS:
        services = {
            r["metadata"]["name"]: r
            for r in _build(folder)
            if r["apiVersion"] == "serving.knative.dev/v1" and r["kind"] == "Service"
        }
        local = {
            n
            for n, s in services.items()
            if s["metadata"]["labels"].get("networking.knative.dev/visibility") == "cluster-local"
        }
        assert local == {"submit", "compute", "status"}


def test_the_overlay_requires_the_ingress_token() -> None:
    """Reachable from outside, the ingress must not start without its token's Secret key.
    The compat folder is, like the base, cluster-local: a cluster overlay builds on it."""
    kubectl = shutil.which("kubectl")
    assert kubectl
    for folder in CLUSTERS:
        built = subprocess.run(
            [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True
        ).stdout
        (ingress,) = (
            r
            for r in yaml.safe_load_all(built)
            if r and r["kind"] == "Service" and r["metadata"]["name"] == "ingress"
        )
        (container,) = ingress["spec"]["template"]["spec"]["containers"]
        refs = {
            var["name"]: var["valueFrom"]["secretKeyRef"]
            for var in container["env"]
            if "valueFrom" in var
        }
        assert refs["GRPC_AUTH_TOKEN"]["key"] == "GRPC_AUTH_TOKEN"
        assert refs["GRPC_AUTH_TOKEN"].get("optional", False) is False


def test_documented_grpcurl_checks_speak_plaintext_or_verify_tls() -> None:
    """In the mesh the ingress serves h2c (-plaintext); over TLS a grpcurl line names the CA
    it verifies with (-cacert): a line with neither would try TLS against system roots."""
    lines = [
        line.strip()
        for doc in [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")]
        for block in doc.read_text().split("```")[1::2]  # inside code fences
        for line in block.splitlines()
        if line.strip().startswith("grpcurl ")
    ]
    assert lines
    assert [line for line in lines if not {"-plaintext", "-cacert"} & set(line.split())] == []


def test_yaml_passes_yamllint() -> None:
    result = subprocess.run(
        [
            str(BIN / "yamllint"),
            "--strict",
            "-c",
            str(REPO_ROOT / ".yamllint.yaml"),
            str(KNATIVE),
            str(REPO_ROOT / ".github"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_gunicorn_control_socket_and_temporary_files_go_to_a_writable_mount(
    base: dict[str, list[Any]], tmp_path: Path
) -> None:
    """gunicorn puts its control socket in $XDG_RUNTIME_DIR, else under $HOME; on the
    read-only root that fails with "Control server error" at every start. Temporary files
    (compute's CSV before its upload) go to $TMPDIR: the same writable mount."""
    final_stage = (REPO_ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    (runtime_dir,) = re.findall(r"\bXDG_RUNTIME_DIR=(\S+)", final_stage)
    (temporary,) = re.findall(r"\bTMPDIR=(\S+)", final_stage)
    assert temporary == runtime_dir
    for name in HTTP_FUNCTIONS:
        spec = _services(base)[name].spec.template.spec
        mounts = {m.mount_path: m.name for m in spec.containers[0].volume_mounts}
        assert runtime_dir in mounts, name
        assert mounts[runtime_dir] in {v.name for v in spec.volumes}, name
    # Those variables are what gunicorn and tempfile read (the mount exists only in the pod:
    # a folder stands in for it here).
    stand_in = str(tmp_path)
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gunicorn.config as c, tempfile;"
            " print(c.ControlSocket.default); print(tempfile.gettempdir())",
        ],
        env={"XDG_RUNTIME_DIR": stand_in, "TMPDIR": stand_in, "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [str(Path(where[0]).parent), where[1]] == [stand_in, stand_in]


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "style", str(REPO_ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_image_workflow_scans_every_platform_before_pushing() -> None:
    """A failing scan must publish nothing: every platform pushed was built on its own,
    loaded and scanned, and no step pushes before the last scan."""
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "image.yml").read_text())
    steps = workflow["jobs"]["image"]["steps"]
    builds = [
        (i, s.get("with", {}))
        for i, s in enumerate(steps)
        if "build-push-action" in s.get("uses", "")
    ]
    scans = [i for i, s in enumerate(steps) if "trivy-action" in s.get("uses", "")]
    loaded = {w["tags"]: w["platforms"] for _, w in builds if w.get("load")}
    refs = [steps[i]["with"]["image-ref"] for i in scans]
    assert set(refs) <= set(loaded), "a scan reads an image from the registry: pushed already"
    scanned = {loaded[ref] for ref in refs}
    pushes = [(i, w) for i, w in builds if w.get("push")]
    assert pushes
    for index, push in pushes:
        assert index > max(scans)
        assert set(push["platforms"].split(",")) <= scanned
    logins = [i for i, s in enumerate(steps) if "login-action" in s.get("uses", "")]
    assert min(logins) > max(scans)  # nothing could be pushed before the scans


def test_github_workflows_match_their_schema() -> None:
    workflows = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))
    assert {p.stem for p in workflows} >= {"lint", "test", "image"}
    result = subprocess.run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, workflows),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compat_overlay_runs_the_ingress_where_old_callers_look() -> None:
    """otel-worker.otel-worker.svc:50051 answers gRPC and :8080 the downloads, from the
    ingress program with the settings those ports mean, without a token on purpose, and
    only for the callers its NetworkPolicy lets in."""
    built = _build(COMPAT)
    by_kind = {(r["apiVersion"], r["kind"], r["metadata"]["name"]): r for r in built}
    deployment = by_kind[("apps/v1", "Deployment", "otel-worker")]
    service = by_kind[("v1", "Service", "otel-worker")]
    policy = by_kind[("networking.k8s.io/v1", "NetworkPolicy", "otel-worker-callers")]
    # Everything of the base is there too, unchanged.
    assert {r["metadata"]["name"] for r in built if r["kind"] == "Trigger"} == {
        t["metadata"]["name"] for t in _build(BASE) if t["kind"] == "Trigger"
    }
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "/app/functions/ingress/main.py"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["port"]: ports[p["targetPort"]] for p in service["spec"]["ports"]} == {
        50051: 50051,
        8080: 8080,
    }
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == set(ports)
    # The process listens where the ports say, as GrpcSettings reads its environment.
    env = {v["name"]: v["value"] for v in container["env"]}
    configmap = next(r for r in built if r["kind"] == "ConfigMap")
    settings = config.GrpcSettings.model_validate(
        {k.lower(): v for k, v in {**configmap["data"], **env}.items()}
    )
    assert (settings.listen_port, settings.http_port) == (ports["grpc"], ports["http"])
    assert settings.grpc_allow_unauthenticated
    assert settings.grpc_auth_token is None
    assert "GRPC_AUTH_TOKEN" not in {v["name"] for v in container["env"]}
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["grpc"]["port"] == ports["grpc"]
    # Same program, same upstreams as the Knative ingress.
    knative = next(
        r for r in built if r["kind"] == "Service" and r["metadata"]["name"] == "ingress"
    )["spec"]["template"]["spec"]["containers"][0]
    upstream = {"SUBMIT_URL", "STATUS_URL"}
    assert {v["name"]: v["value"] for v in knative["env"] if v["name"] in upstream} == {
        k: v for k, v in env.items() if k in upstream
    }
    assert container["securityContext"] == knative["securityContext"]
    assert container["image"] == knative["image"]


# What Knative Serving's webhook checks (or silently ignores) beyond its CRD schema, which
# accepts any annotation and any mount path.
AUTOSCALING = "autoscaling.knative.dev/"
KNOWN_AUTOSCALING_KEYS = {
    AUTOSCALING + key
    for key in (
        "class",
        "metric",
        "target",
        "target-utilization-percentage",
        "target-burst-capacity",
        "min-scale",
        "max-scale",
        "initial-scale",
        "activation-scale",
        "scale-down-delay",
        "scale-to-zero-pod-retention-period",
        "window",
        "panic-window-percentage",
        "panic-threshold-percentage",
    )
}
AUTOSCALING_CLASSES = {"kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"}
RESERVED_MOUNT_PATHS = {"/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"}
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
PROBE_HANDLERS = ("httpGet", "tcpSocket", "grpc")
EMPTY_DIR_FIELDS = {"medium", "sizeLimit"}


def knative_rule_violations(resource: dict[str, Any]) -> list[str]:
    """What Knative would refuse, or ignore without a word, in a rendered workload: unknown
    autoscaling annotation keys (a typo such as `minscale` is silently ignored), a gRPC
    probe on a port not named h2c, a probe without an explicit port (Knative fills in none
    for gRPC: port 0 is not admitted), a volume mounted at a reserved path."""
    found: list[str] = []
    name = f"{resource['kind']} {resource['metadata']['name']}"
    knative = resource["apiVersion"] == "serving.knative.dev/v1"
    template = resource["spec"]["template"]
    for where, keys in (
        ("metadata", resource["metadata"].get("annotations") or {}),
        ("template", (template.get("metadata") or {}).get("annotations") or {}),
    ):
        for key, value in keys.items():
            if not key.startswith(AUTOSCALING):
                continue
            if where == "metadata":
                found.append(f"{name}: {key} belongs on spec.template (ignored here)")
            elif key not in KNOWN_AUTOSCALING_KEYS:
                found.append(f"{name}: unknown annotation {key}")
            elif key == AUTOSCALING + "class" and value not in AUTOSCALING_CLASSES:
                found.append(f"{name}: unknown autoscaling class {value}")
    for volume in template["spec"].get("volumes", []):
        # The CRD keeps any field under emptyDir (it sits behind a feature flag).
        if unknown := set(volume.get("emptyDir") or {}) - EMPTY_DIR_FIELDS:
            found.append(f"{name}: unknown emptyDir fields {sorted(unknown)}")
    for container in template["spec"]["containers"]:
        ports = {p.get("name", ""): p["containerPort"] for p in container.get("ports", [])}
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(probe_name)
            if probe is None:
                continue
            handler = next(h for h in PROBE_HANDLERS if h in probe)
            port = probe[handler].get("port")
            if port is None:
                found.append(f"{name}: {probe_name}.{handler} names no port")
            elif port not in ports.values() and port not in ports:
                found.append(f"{name}: {probe_name}.{handler}.port {port} is no container port")
            if knative and handler == "grpc" and set(ports) != {"h2c"}:
                found.append(f"{name}: a gRPC probe needs the port named h2c")
        if knative:
            if not set(ports) <= {"http1", "h2c"} or len(ports) != 1:
                found.append(f"{name}: one port, named http1 or h2c, not {sorted(ports)}")
            for mount in container.get("volumeMounts", []):
                path = posixpath.normpath(mount["mountPath"])
                if path in RESERVED_MOUNT_PATHS:
                    found.append(f"{name}: {path} is a reserved mount path")
            for var in container.get("env", []):
                if var["name"] in RESERVED_ENV:
                    found.append(f"{name}: {var['name']} is set by Knative")
    return found


WORKLOAD_KINDS = {("serving.knative.dev/v1", "Service"), ("apps/v1", "Deployment")}


def _workloads(folder: Path) -> list[dict[str, Any]]:
    return [
        r
        for r in _build(folder)
        if (r["apiVersion"], r["kind"])
        in {("serving.knative.dev/v1", "Service"), ("apps/v1", "Deployment")}
    ]


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(KNATIVE)))
def test_rendered_workloads_keep_the_rules_knative_checks(folder: Path) -> None:
    workloads = _workloads(folder)
    assert workloads
    assert [v for w in workloads for v in knative_rule_violations(w)] == []


def _ingress_service() -> dict[str, Any]:
    return next(w for w in _workloads(BASE) if w["metadata"]["name"] == "ingress")


def _compute_service() -> dict[str, Any]:
    return next(w for w in _workloads(BASE) if w["metadata"]["name"] == "compute")


def _broken(resource: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> list[str]:
    copy = json.loads(json.dumps(resource))
    change(copy)
    return knative_rule_violations(copy)


def test_the_rules_catch_what_the_schemas_let_through() -> None:
    def container(r: dict[str, Any]) -> dict[str, Any]:
        found: dict[str, Any] = r["spec"]["template"]["spec"]["containers"][0]
        return found

    def typo(r: dict[str, Any]) -> None:
        annotations = r["spec"]["template"]["metadata"]["annotations"]
        annotations["autoscaling.knative.dev/minscale"] = "1"

    def on_the_service(r: dict[str, Any]) -> None:
        r["metadata"]["annotations"]["autoscaling.knative.dev/max-scale"] = "3"

    def no_probe_port(r: dict[str, Any]) -> None:
        del container(r)["livenessProbe"]["grpc"]["port"]

    def grpc_port_named_grpc(r: dict[str, Any]) -> None:
        container(r)["ports"][0]["name"] = "grpc"

    def size_typo(r: dict[str, Any]) -> None:
        r["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] = {"sizelimit": "1Gi"}

    def tmp_mount(r: dict[str, Any]) -> None:
        container(r)["volumeMounts"][0]["mountPath"] = "/tmp/"

    ingress, compute = _ingress_service(), _compute_service()
    assert knative_rule_violations(ingress) == knative_rule_violations(compute) == []
    assert _broken(compute, typo) == [
        "Service compute: unknown annotation autoscaling.knative.dev/minscale"
    ]
    assert _broken(compute, on_the_service) == [
        "Service compute: autoscaling.knative.dev/max-scale belongs on spec.template (ignored here)"
    ]
    assert _broken(ingress, no_probe_port) == ["Service ingress: livenessProbe.grpc names no port"]
    assert "Service ingress: a gRPC probe needs the port named h2c" in _broken(
        ingress, grpc_port_named_grpc
    )
    assert _broken(compute, tmp_mount) == ["Service compute: /tmp is a reserved mount path"]
    assert _broken(compute, size_typo) == ["Service compute: unknown emptyDir fields ['sizelimit']"]


# The upstream CRD schemas of the Knative versions DEPLOYMENT.md names, and of Argo CD's
# Application (tests/repo/crds/, with their source). The API server prunes fields a
# structural schema does not know, and kubectl's default (strict) field validation refuses
# them: unknown fields are errors wherever the CRD does not preserve them.
CRDS = REPO_ROOT / "tests" / "repo" / "crds"
ROOT_FIELDS = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {}}


def strict_schema(node: Any, root: bool = True) -> Any:
    """A CRD's structural schema as a JSON Schema that refuses the fields the CRD does
    not know; a subtree cut from the stored copy (`x-omitted`) accepts nothing."""
    if not isinstance(node, dict):
        return node
    if node.get("x-omitted"):
        return False
    converted: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            converted[key] = {name: strict_schema(sub, False) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"}:
            converted[key] = strict_schema(value, False)
        elif key == "anyOf":
            converted[key] = [strict_schema(sub, False) for sub in value]
        else:
            converted[key] = value
    if root:
        converted["properties"] = {**ROOT_FIELDS, **converted.get("properties", {})}
    if (
        "properties" in converted
        and "additionalProperties" not in converted
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        converted["additionalProperties"] = False
    return converted


def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    serving = yaml.safe_load((CRDS / "knative-serving-1.16.0-services.yaml").read_text())
    eventing = yaml.safe_load((CRDS / "knative-eventing-1.17.0.yaml").read_text())
    argo_cd = yaml.safe_load((CRDS / "argo-cd-application.yaml").read_text())
    schemas = {
        ("argoproj.io/v1alpha1", "Application"): argo_cd,
        ("serving.knative.dev/v1", "Service"): serving,
        ("eventing.knative.dev/v1", "Broker"): eventing["Broker"],
        ("eventing.knative.dev/v1", "Trigger"): eventing["Trigger"],
        ("sources.knative.dev/v1", "SinkBinding"): eventing["SinkBinding"],
    }
    return {kind: jsonschema.Draft7Validator(strict_schema(s)) for kind, s in schemas.items()}


CRD_VALIDATORS = _crd_validators()
CORE_API_VERSIONS = {"v1", "batch/v1", "apps/v1", "networking.k8s.io/v1"}


def crd_errors(resource: dict[str, Any]) -> list[str]:
    """What the CRD schema of `resource`'s kind refuses in it, one line per error."""
    validator = CRD_VALIDATORS[(resource["apiVersion"], resource["kind"])]
    return [
        f"{resource['kind']} {resource['metadata']['name']}: "
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(resource)
    ]


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(KNATIVE)))
def test_every_rendered_document_passes_its_schema(folder: Path) -> None:
    """Core kinds against the Kubernetes schemas, Knative kinds against their CRDs: every
    document kustomize renders is checked by one or the other."""
    for resource in _build(folder):
        kind = (resource["apiVersion"], resource["kind"])
        if resource["apiVersion"] in CORE_API_VERSIONS:
            kubernetes_validate.validate(resource, "1.33.0", strict=True)
        else:
            assert kind in CRD_VALIDATORS, f"no schema for {kind}"
            assert crd_errors(resource) == []


def test_the_crd_schemas_refuse_what_knative_would() -> None:
    ingress, compute = _ingress_service(), _compute_service()

    def without_probe_port(r: dict[str, Any]) -> None:
        del r["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"]

    def misspelt(r: dict[str, Any]) -> None:
        r["spec"]["template"]["spec"]["containerConcurency"] = 8

    def misspelt_probe_field(r: dict[str, Any]) -> None:
        r["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5

    def secret_volume(r: dict[str, Any]) -> None:
        r["spec"]["template"]["spec"]["volumes"][0]["secret"] = {"secretName": "x"}

    broken = [
        _changed(ingress, without_probe_port),
        _changed(compute, misspelt),
        _changed(compute, misspelt_probe_field),
    ]
    # Serving 1.12-1.16 refuse a gRPC probe without its port outright.
    assert any("'port' is a required property" in e for e in broken[0]), broken[0]
    assert any("containerConcurency" in e for e in broken[1]), broken[1]
    assert any("periodSecond" in e for e in broken[2]), broken[2]
    # A field of a subtree the stored copy cut is refused until the copy has it.
    assert _changed(compute, secret_volume)
    # Where the CRD keeps unknown fields (a Trigger's spec, emptyDir), it cannot help:
    # the strict models and the rules above do.
    trigger = next(r for r in _build(BASE) if r["kind"] == "Trigger")
    trigger["spec"]["fitler"] = {}
    assert crd_errors(trigger) == []
    with pytest.raises(ValueError, match="fitler"):
        Trigger.model_validate(trigger)


def test_the_argo_cd_application_passes_its_crd_schema() -> None:
    """The Application is no kustomize output (it is copied to the gitops repo by hand),
    so it is held to Argo CD's CRD schema on its own: a misspelt field under syncPolicy or
    source is refused, as is a part of the schema the stored copy cut."""
    application = _application()
    assert crd_errors(application) == []

    def sync_typo(r: dict[str, Any]) -> None:
        r["spec"]["syncPolicy"]["automated"]["selfHeel"] = True

    def source_typo(r: dict[str, Any]) -> None:
        r["spec"]["source"]["targetRevison"] = "main"

    def retry_as_text(r: dict[str, Any]) -> None:
        r["spec"]["syncPolicy"]["retry"]["limit"] = "5"

    def no_destination(r: dict[str, Any]) -> None:
        del r["spec"]["destination"]

    def multi_source(r: dict[str, Any]) -> None:
        r["spec"]["sources"] = [r["spec"].pop("source")]

    assert any("selfHeel" in e for e in _changed(application, sync_typo))
    assert any("targetRevison" in e for e in _changed(application, source_typo))
    assert any("syncPolicy.retry.limit" in e for e in _changed(application, retry_as_text))
    assert any("'destination' is a required" in e for e in _changed(application, no_destination))
    assert _changed(application, multi_source)


def _changed(resource: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> list[str]:
    copy = json.loads(json.dumps(resource))
    change(copy)
    return crd_errors(copy)


def _pod_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod spec of a workload (Service, Deployment, Job, CronJob); none for others."""
    spec = resource.get("spec") or {}
    if resource["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if resource["kind"] in {"Deployment", "Job"} or (
        resource["kind"] == "Service" and resource["apiVersion"] == "serving.knative.dev/v1"
    ):
        return [spec["template"]["spec"]]
    return []


@pytest.mark.parametrize("folder", [BASE, *OVERLAYS], ids=lambda p: str(p.relative_to(KNATIVE)))
def test_no_workload_mounts_a_service_account_token(folder: Path) -> None:
    """None of them calls the Kubernetes API: a token in the pod would only help an intruder."""
    specs = {
        f"{r['kind']} {r['metadata']['name']}": spec
        for r in _build(folder)
        for spec in _pod_specs(r)
    }
    assert len(specs) >= 6  # four Services, the sweep and the migration
    mounting = [
        name
        for name, spec in specs.items()
        if spec.get("automountServiceAccountToken") is not False
    ]
    assert mounting == []


SERVICE_LABEL = "serving.knative.dev/service"
ACTIVATOR = ("knative-serving", (("app", "activator"),))
GATEWAY = ("kourier-system", ())
BROKER_FILTER = ("knative-eventing", (("eventing.knative.dev/brokerRole", "filter"),))
CALLERS = ("label otel-worker.dev/caller=true", ())


def _peer(peer: NetworkPolicyPeer) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(namespace, pod labels) a peer admits; the namespace by name or by label."""
    assert peer.namespace_selector is not None, "a peer without a namespace selector"
    namespace = peer.namespace_selector.match_labels
    assert namespace, "an empty namespace selector admits every namespace"
    pods = tuple(sorted((peer.pod_selector.match_labels if peer.pod_selector else {}).items()))
    name = namespace.get("kubernetes.io/metadata.name")
    if name is None:
        ((key, value),) = namespace.items()
        name = f"label {key}={value}"
    return name, pods


def test_each_function_admits_only_knative_the_broker_and_its_named_callers(
    base: dict[str, list[Any]],
) -> None:
    """Read against the Services and Triggers: every function has a policy; the activator
    and the gateway reach each; the broker's filter only the Triggers' subscribers and
    dead-letter sinks; the labelled callers' namespaces only status."""
    policies: dict[str, list[NetworkPolicy]] = {}
    for policy in base["NetworkPolicy"]:
        assert policy.spec.policy_types == ["Ingress"]
        assert list(policy.spec.pod_selector.match_labels) == [SERVICE_LABEL]
        policies.setdefault(policy.spec.pod_selector.match_labels[SERVICE_LABEL], []).append(policy)
    services = set(_services(base))
    assert set(policies) == services  # each function guarded, no policy guarding nothing
    delivered_to = {
        destination.ref.name
        for trigger in base["Trigger"]
        for destination in (
            trigger.spec.subscriber,
            *([trigger.spec.delivery.dead_letter_sink] if trigger.spec.delivery else []),
        )
        if destination is not None and destination.ref is not None
    }
    assert delivered_to == {"submit", "compute", "status"}
    for name in sorted(services):
        (policy,) = policies[name]
        admitted = {_peer(peer) for rule in policy.spec.ingress for peer in rule.from_}
        expected = {ACTIVATOR, GATEWAY}
        if name in delivered_to:
            expected.add(BROKER_FILTER)
        if name == "status":
            expected.add(CALLERS)
        assert admitted == expected, name
