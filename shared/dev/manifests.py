"""Strict models of the Knative and Kubernetes manifest fields we use, and their loader.

Unknown or misspelt fields fail validation, so a typo in `knative/` is caught by the tests
instead of being ignored by the cluster. The dev broker reads its Triggers through these
models, so what is tested locally is what is deployed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

BASE = Path(__file__).resolve().parents[2] / "knative" / "apps" / "base" / "otel-worker"
"""The kustomize base holding the Broker, Triggers and the functions' Services."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ObjectMeta(_Strict):
    """The metadata fields we set."""

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class KReference(_Strict):
    """A reference to an addressable object (e.g. a Knative Service)."""

    api_version: str = Field(alias="apiVersion")
    kind: str
    name: str
    namespace: str | None = None


class Destination(_Strict):
    """Where events go: a reference, a URI, or a reference plus a relative path."""

    ref: KReference | None = None
    uri: str | None = None


class DeliverySpec(_Strict):
    """Retries, backoff, per-attempt timeout and dead-letter sink of a delivery."""

    retry: Annotated[int, Field(ge=0)] | None = None
    backoff_policy: Literal["linear", "exponential"] | None = Field(
        default=None, alias="backoffPolicy"
    )
    backoff_delay: dt.timedelta | None = Field(default=None, alias="backoffDelay")
    timeout: dt.timedelta | None = None
    dead_letter_sink: Destination | None = Field(default=None, alias="deadLetterSink")


def backoff_seconds(policy: str | None, delay: float, retry: int) -> float:
    """Seconds Knative Eventing waits before retry `retry` (0 for the first retry): `delay`
    times 2**retry when exponential (its default), `delay` times (retry + 1) when linear."""
    if policy == "linear":
        return delay * (retry + 1)
    return float(delay * 2**retry)


def retry_window(delivery: DeliverySpec) -> float:
    """Seconds between a failed first delivery and the last retry, counting the backoffs
    only (each attempt's own duration adds to it): 5+10+...+160 = 315 s for `retry: 6`,
    `backoffDelay: PT5S`, exponential."""
    delay = delivery.backoff_delay.total_seconds() if delivery.backoff_delay else 0.0
    return sum(
        backoff_seconds(delivery.backoff_policy, delay, n) for n in range(delivery.retry or 0)
    )


LEASE_MARGIN_SECONDS = 60
"""How much longer than JOB_LEASE_SECONDS every Trigger's retry window must be: a delivery
refused with 409 by a dead worker's lease is retried after the lease expired, with room for
compute's cold start and the claim that began the lease after the first attempt began."""


class BrokerSpec(_Strict):
    """The broker fields we use."""

    delivery: DeliverySpec | None = None


class Broker(_Strict):
    """eventing.knative.dev/v1 Broker."""

    api_version: Literal["eventing.knative.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["Broker"]
    metadata: ObjectMeta
    spec: BrokerSpec = Field(default_factory=BrokerSpec)


class TriggerFilter(_Strict):
    """Exact-match filter on CloudEvent attributes."""

    attributes: dict[str, str]


class TriggerSpec(_Strict):
    """The trigger fields we use."""

    broker: str
    filter: TriggerFilter
    subscriber: Destination
    delivery: DeliverySpec | None = None


class Trigger(_Strict):
    """eventing.knative.dev/v1 Trigger."""

    api_version: Literal["eventing.knative.dev/v1"] = Field(alias="apiVersion")
    kind: Literal["Trigger"]
    metadata: ObjectMeta
    spec: TriggerSpec

    def matches(self, attributes: dict[str, Any]) -> bool:
        """True when every filter attribute equals the event's (Knative exact matching)."""
        return all(attributes.get(k) == v for k, v in self.spec.filter.attributes.items())


class LabelSelector(_Strict):
    """Labels that must all match (`matchLabels`; an empty selector matches everything)."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")


class NetworkPolicyPeer(_Strict):
    """Who may connect: pods matching `pod_selector` in namespaces matching
    `namespace_selector` (either absent: this namespace / every pod of those namespaces)."""

    namespace_selector: LabelSelector | None = Field(default=None, alias="namespaceSelector")
    pod_selector: LabelSelector | None = Field(default=None, alias="podSelector")


class NetworkPolicyIngressRule(_Strict):
    """One rule: any of `from_` may connect."""

    from_: list[NetworkPolicyPeer] = Field(alias="from", min_length=1)


class NetworkPolicySpec(_Strict):
    """Which pods the policy guards and who may reach them (ingress only)."""

    pod_selector: LabelSelector = Field(alias="podSelector")
    policy_types: list[Literal["Ingress"]] = Field(alias="policyTypes")
    ingress: list[NetworkPolicyIngressRule]


class NetworkPolicy(_Strict):
    """A Kubernetes NetworkPolicy, as the manifests write them."""

    api_version: Literal["networking.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: NetworkPolicySpec


Eventing = Annotated[Broker | Trigger, Field(discriminator="kind")]
_EVENTING = TypeAdapter(Eventing)


def documents(folder: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every YAML document under `folder` (sorted by path), with the file it came from."""
    for path in sorted(folder.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def load_eventing(folder: Path = BASE) -> tuple[list[Broker], list[Trigger]]:
    """The Brokers and Triggers under `folder`, validated strictly."""
    brokers: list[Broker] = []
    triggers: list[Trigger] = []
    for path, document in documents(folder):
        if document.get("kind") not in {"Broker", "Trigger"}:
            continue
        try:
            resource = _EVENTING.validate_python(document)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if isinstance(resource, Broker):
            brokers.append(resource)
        else:
            triggers.append(resource)
    return brokers, triggers
