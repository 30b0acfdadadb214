"""PromQL of the chart's dashboards and alert rules, and a throwaway Prometheus to run it.

Reusable by any test: `all_expressions()` lists every query (Grafana variables
substituted), and `PrometheusServer` runs the real `prometheus` binary on a free port,
optionally scraping targets, with `query()` returning the API's answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeq"
RULES = CHART / "rules" / "alerts.yaml"
DASHBOARDS = tuple(sorted((CHART / "dashboards").glob("*.json")))

# Grafana's built-in interval variables and a sensible stand-in for each.
_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "30000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Replace $var, ${var} and ${var:format} with their values; unknown ones raise KeyError."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return {**_BUILTINS, **variables}[name]

    return _VARIABLE.sub(value, expr)


def _panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", ()))  # collapsed rows nest their panels


def dashboard_panels(path: Path) -> list[dict[str, Any]]:
    """Every panel of a dashboard that has queries (rows excluded, nested ones included)."""
    dashboard = json.loads(Path(path).read_text())
    return [p for p in _panels(dashboard.get("panels", ())) if p.get("targets")]


def variable_queries(path: Path) -> list[str]:
    """The PromQL behind the dashboard's query variables (label_values(selector, label))."""
    dashboard = json.loads(Path(path).read_text())
    out = []
    for var in dashboard.get("templating", {}).get("list", ()):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query)
        if m is None:
            raise ValueError(f"{path.name}: variable {var['name']}: unsupported query {query!r}")
        out.append(m.group("selector") or "up")
    return out


def dashboard_targets(path: Path, *, queue: str = ".*") -> list[tuple[str, str]]:
    """(panel title and refId, query) of every visible panel query, variables substituted."""
    return [
        (f"{panel['title']} ({target['refId']})", substitute(target["expr"], {"queue": queue}))
        for panel in dashboard_panels(path)
        for target in panel["targets"]
        if not target.get("hide")
    ]


def dashboard_queries(path: Path, *, queue: str = ".*") -> list[str]:
    """Every panel query of a dashboard, with $queue and Grafana's interval variables set.

    The default queue regex selects all queues (what "All" does); pass a queue name
    ("namespace/name", regex-escaped as needed) to look at one.
    """
    return [expr for _, expr in dashboard_targets(path, queue=queue)]


def rule_expressions(path: Path = RULES) -> dict[str, str]:
    """Alert (or record) name → expression of a Prometheus rule file."""
    data = yaml.safe_load(Path(path).read_text())
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in data["groups"]
        for rule in group["rules"]
    }


def all_expressions(*, queue: str = ".*") -> list[tuple[str, str]]:
    """(where, expression) for every dashboard panel and variable query and every rule."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARDS:
        out += [(f"{path.name}: {t}", e) for t, e in dashboard_targets(path, queue=queue)]
        out += [(f"{path.name}: variable {i}", e) for i, e in enumerate(variable_queries(path))]
    out += [(f"{RULES.name}: {name}", e) for name, e in rule_expressions().items()]
    return out


def metric_names(expr: str) -> set[str]:
    """kubeq_* metric names an expression reads (histogram suffixes kept)."""
    return set(re.findall(r"\bkubeq_[a-z0-9_]+", expr))


# --- a real Prometheus -----------------------------------------------------------------------


class QueryError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('errorType')}: {body.get('error')}")
        self.status, self.body = status, body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """`prometheus` on 127.0.0.1:<free port> with its TSDB in `workdir`.

    `targets` are host:port strings scraped every `scrape_interval` under job "kubeq".
    """

    def __init__(
        self,
        workdir: Path,
        *,
        targets: Iterable[str] = (),
        scrape_interval: str = "1s",
        binary: str = "prometheus",
        start_timeout: float = 30.0,
    ) -> None:
        found = shutil.which(binary)
        if found is None:
            raise FileNotFoundError(f"{binary} not found (Debian package `prometheus`)")
        self.binary, self.workdir, self.start_timeout = found, Path(workdir), start_timeout
        self.targets, self.scrape_interval = list(targets), scrape_interval
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": "1s"}
        }
        if self.targets:
            config["scrape_configs"] = [
                {"job_name": "kubeq", "static_configs": [{"targets": self.targets}]}
            ]
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = (self.workdir / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self._config()}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "GOMAXPROCS": "2"},
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as rsp:
                    if rsp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"prometheus not ready in {self.start_timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def query(self, expr: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Instant query → result list; a bad expression raises QueryError (HTTP 400)."""
        data = urllib.parse.urlencode({"query": expr}).encode()
        request = urllib.request.Request(f"{self.url}/api/v1/query", data=data)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as rsp:
                body = json.load(rsp)
        except urllib.error.HTTPError as exc:
            raise QueryError(exc.code, json.loads(exc.read() or b"{}")) from None
        if body.get("status") != "success":
            raise QueryError(200, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- what the code exports -------------------------------------------------------------------


def exported_metrics() -> dict[str, frozenset[str]]:
    """Sample name → label names of every metric the worker and the operator define.

    Read from the real metric objects (counters get `_total`, histograms `_bucket` with
    `le`, `_sum` and `_count`), so dashboards and rules can be checked against the code.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from kubeq.metrics import WorkerMetrics
    from kubeq_operator.engine.metrics import OperatorMetrics

    out: dict[str, frozenset[str]] = {}
    for owner in (
        WorkerMetrics("ns/q", registry=CollectorRegistry()),
        OperatorMetrics(registry=CollectorRegistry()),
    ):
        for metric in vars(owner).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            name, labels, kind = metric._name, frozenset(metric._labelnames), metric._type
            if kind == "counter":
                out[f"{name}_total"] = labels
            elif kind == "histogram":
                out[f"{name}_bucket"] = labels | {"le"}
                out[f"{name}_sum"] = out[f"{name}_count"] = labels
            else:
                out[name] = labels
    return out


def used_labels(expr: str) -> set[str]:
    """Label names an expression groups by or matches on (by/without clauses, selectors)."""
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    for selector in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    return labels
