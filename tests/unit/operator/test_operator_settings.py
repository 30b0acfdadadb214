"""Operator settings from the environment, and how they become kopf.run arguments."""

from __future__ import annotations

import pytest

from kubeq_operator.kube.run import kopf_options
from kubeq_operator.kube.settings import OperatorSettings


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = OperatorSettings()
    assert (cfg.namespace, cfg.metrics_port, cfg.peering_name, cfg.standalone) == (
        "",
        8080,
        "kubeq",
        False,
    )
    monkeypatch.setenv("KUBEQ_OPERATOR_NAMESPACE", "queues")
    monkeypatch.setenv("KUBEQ_OPERATOR_STANDALONE", "true")
    monkeypatch.setenv("KUBEQ_OPERATOR_METRICS_PORT", "9000")
    monkeypatch.setenv("KUBEQ_LOG_FORMAT", "json")
    cfg = OperatorSettings()
    assert (cfg.namespace, cfg.standalone, cfg.metrics_port) == ("queues", True, 9000)
    assert cfg.log_format == "json"
    assert OperatorSettings(log_level="DEBUG").log_level == "DEBUG"


def test_kopf_options() -> None:
    clustered = kopf_options(OperatorSettings(priority=5))
    assert clustered == {
        "standalone": False,
        "peering_name": "kubeq",
        "liveness_endpoint": "http://0.0.0.0:8081/healthz",
        "clusterwide": True,
        "priority": 5,
    }
    alone = kopf_options(OperatorSettings(namespace="q", standalone=True, health_port=0))
    assert alone == {
        "standalone": True,
        "peering_name": None,
        "liveness_endpoint": None,
        "namespaces": ["q"],
    }


def test_peering_lifetime_reaches_kopf(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    from kubeq_operator.kube.handlers import configure_kopf

    assert OperatorSettings().peering_lifetime_seconds == 15  # kopf's own default is 60
    monkeypatch.setenv("KUBEQ_OPERATOR_PEERING_LIFETIME_SECONDS", "6")
    settings = kopf.OperatorSettings()
    configure_kopf(settings, OperatorSettings(priority=7))
    assert (settings.peering.lifetime, settings.peering.priority) == (6, 7)
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        OperatorSettings(peering_lifetime_seconds=1)
