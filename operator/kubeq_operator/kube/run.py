"""`kubeq operator`: run the kopf operator (contributed to the kubeq CLI by an entry point)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported when the command runs: `kubeq --help` loads this module
    from kubeq_operator.kube.settings import OperatorSettings


def kopf_options(cfg: OperatorSettings) -> dict[str, Any]:
    """Keyword arguments of `kopf.run` for these settings (pure)."""
    options: dict[str, Any] = {
        "standalone": cfg.standalone,
        "peering_name": None if cfg.standalone else cfg.peering_name,
        "liveness_endpoint": (
            f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None
        ),
    }
    if cfg.namespace:
        options["namespaces"] = [cfg.namespace]
    else:
        options["clusterwide"] = True
    if cfg.priority is not None:
        options["priority"] = cfg.priority
    return options


@click.command("operator")
@click.option("--namespace", default=None, help="Watch only this namespace (default: all).")
@click.option("--standalone", is_flag=True, default=None, help="No peering (one replica only).")
@click.option("--metrics-port", type=int, default=None, help="Port of /metrics (default 8080).")
@click.option("--verbose", is_flag=True, help="Debug logging.")
def operator_command(
    namespace: str | None, standalone: bool | None, metrics_port: int | None, verbose: bool
) -> None:
    """Run the TaskQueue operator (KUBEQ_OPERATOR_* variables set the defaults)."""
    import kopf

    import kubeq_operator.kube.handlers  # noqa: F401  (registers the handlers)
    from kubeq_operator.kube.settings import OperatorSettings

    flags: dict[str, Any] = {
        "namespace": namespace,
        "standalone": standalone,
        "metrics_port": metrics_port,
    }
    cfg = OperatorSettings(**{k: v for k, v in flags.items() if v is not None})
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if cfg.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not verbose:
        logging.getLogger().setLevel(cfg.log_level.upper())
    kopf.run(memo=kopf.Memo(settings=cfg), **kopf_options(cfg))
