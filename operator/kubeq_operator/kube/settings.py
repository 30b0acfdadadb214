"""The operator's own settings, from KUBEQ_OPERATOR_* environment variables (and CLI flags)."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeq_operator.core.pod_security import PodPolicy, parse_names


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBEQ_OPERATOR_", frozen=True, extra="ignore")

    namespace: str = Field(default="", description="Watch one namespace; empty: cluster-wide.")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="/metrics; 0: any port.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="kopf's /healthz; 0: off.")
    peering_name: str = Field(default="kubeq", min_length=1)
    standalone: bool = Field(default=False, description="No peering: for a single replica.")
    # How long a replica's heartbeat in the peering object counts: a leader silent for
    # this long (killed, partitioned) is given up and the next replica takes over.
    peering_lifetime_seconds: int = Field(default=15, ge=2, le=600)
    # Replicas of equal priority would all pause (kopf's rule); None draws a random one, so
    # exactly one replica of a Deployment is active and the others wait to take over.
    priority: int | None = None
    # Pod security (docs/security.md): comma-separated lists, as the chart passes them.
    pod_security_exempt_namespaces: str = Field(
        default="",
        description="Namespaces whose worker pods need not meet the 'restricted' standard.",
    )
    allowed_service_accounts: str = Field(
        default="",
        description="Service accounts worker pods may use: name or namespace/name.",
    )
    # Also read as KUBEQ_LOG_FORMAT / KUBEQ_LOG_LEVEL, the names every kubeq process shares.
    log_format: Literal["text", "json"] = Field(
        default="text",
        validation_alias=AliasChoices(
            "KUBEQ_OPERATOR_LOG_FORMAT", "KUBEQ_LOG_FORMAT", "log_format"
        ),
    )
    log_level: str = Field(
        default="INFO",
        validation_alias=AliasChoices("KUBEQ_OPERATOR_LOG_LEVEL", "KUBEQ_LOG_LEVEL", "log_level"),
    )

    def pod_policy(self) -> PodPolicy:
        return PodPolicy(
            exempt_namespaces=parse_names(self.pod_security_exempt_namespaces),
            service_accounts=parse_names(self.allowed_service_accounts),
        )


@functools.cache
def load_settings() -> OperatorSettings:
    """The environment's settings, parsed once per process."""
    return OperatorSettings()
