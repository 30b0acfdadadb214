"""Worker settings from the environment (prefix KUBEQ_), parsed once at startup."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeq.protocol import QueueConfig
from kubeq.protocol.connection import with_credentials


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUBEQ_", extra="ignore", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Credentials and TLS apart from the URL, as the operator passes them from Secrets.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_tls: bool = False  # turns redis:// into rediss://
    redis_tls_insecure_skip_verify: bool = False
    redis_tls_ca_file: str | None = None
    # A client certificate and its key (PEM files) for mutual TLS (tls-auth-clients yes).
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None
    #: the queue to serve, or several separated by commas ("a,b": one share of the slots each)
    queue: str = "default"
    namespace: str = "default"
    #: "package.module:attribute" of the App whose handlers this worker runs
    app: str = ""
    concurrency: int = Field(default=16, ge=1, le=10_000)
    #: most tasks one claim takes (0: all free slots); never more than are free
    claim_batch: int = Field(default=0, ge=0)
    #: most settlements one settle call carries
    settle_batch: int = Field(default=256, ge=1, le=5000)
    #: how long finished tasks wait to share a settle call
    settle_flush_ms: float = Field(default=1.0, ge=0, le=1000)
    #: longest idle block on the wake list; correctness never depends on the wake-up
    idle_wait_seconds: float = Field(default=1.0, gt=0, le=30)
    metrics_port: int = Field(default=9100, ge=0, le=65535)  # 0: no HTTP server
    metrics_host: str = "0.0.0.0"  # probes and scrapes come from outside the pod
    pod_name: str | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    grace_seconds: float = Field(default=30.0, ge=0)
    #: QueueConfig as JSON; else the config published in Redis; else the defaults
    queue_config: QueueConfig | None = None
    #: default per-task timeout in seconds for handlers that set none (None: no limit)
    task_timeout: float | None = Field(default=None, gt=0)
    #: threads for executor="thread" handlers (0: concurrency)
    thread_pool_size: int = Field(default=0, ge=0)
    #: child processes for sync / executor="process" handlers (0: concurrency)
    process_pool_size: int = Field(default=0, ge=0, le=1000)
    #: how child processes start: spawn (fresh interpreter) or forkserver (forked from a
    #: clean server process; faster to replace)
    child_start_method: Literal["spawn", "forkserver"] = "forkserver"
    #: drain and exit (for a restart) after this many tasks (0: never)
    max_tasks: int = Field(default=0, ge=0)
    #: drain and exit (for a restart) once this process's RSS passes this many MiB
    max_rss_mb: int = Field(default=0, ge=0)
    #: recycle a child process after this many tasks (0: never)
    child_max_tasks: int = Field(default=0, ge=0)
    #: recycle a child process once its RSS passes this many MiB after a task (0: never)
    child_max_rss_mb: int = Field(default=0, ge=0)
    breaker_failure_threshold: int = Field(default=3, ge=1)
    breaker_backoff_base_seconds: float = Field(default=0.1, gt=0)
    breaker_backoff_max_seconds: float = Field(default=5.0, gt=0)
    #: /readyz fails when no Redis call succeeded for this long
    ready_window_seconds: float = Field(default=15.0, gt=0)
    #: /healthz fails after this long without progress while work waits (raised to twice
    #: the longest handler timeout, so a handler within its timeout is never "stuck")
    liveness_stall_seconds: float = Field(default=300.0, gt=0)
    #: the event loop: auto (uvloop when installed, else asyncio's), uvloop, asyncio
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    #: collect the garbage collector's youngest generation every this many allocations
    #: (and freeze what start-up left alive); 0 keeps Python's policy (see gc_policy)
    gc_gen0_threshold: int = Field(default=20_000, ge=0, le=10_000_000)

    def queue_names(self) -> list[str]:
        return list(dict.fromkeys(q.strip() for q in self.queue.split(",") if q.strip()))

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError("redis_tls_cert_file and redis_tls_key_file go together")
        names = self.queue_names()
        if not names:
            raise ValueError("no queue to serve")
        if len(names) > self.concurrency:
            raise ValueError(f"{len(names)} queues need a concurrency of at least {len(names)}")
        qc = self.queue_config
        if qc is not None and (qc.name, qc.namespace) != (self.queue, self.namespace):
            raise ValueError(
                f"queue_config names {qc.full_name} but the worker serves "
                f"{self.namespace}/{self.queue}"
            )
        return self

    def redis_connection(self) -> tuple[str, dict[str, Any]]:
        """The URL and the extra redis-py options the Redis settings add up to."""
        password = self.redis_password.get_secret_value() if self.redis_password else None
        url = with_credentials(
            self.redis_url,
            username=self.redis_username or None,
            password=password,
            tls=self.redis_tls,
            tls_insecure=self.redis_tls_insecure_skip_verify,
            tls_ca_file=self.redis_tls_ca_file,
            tls_cert_file=self.redis_tls_cert_file,
            tls_key_file=self.redis_tls_key_file,
        )
        return url, {}


def idle_wait_cap(idle_wait: float, socket_timeout: float | None) -> float:
    """The idle BLPOP block, always shorter than the connection's socket timeout: a block
    that outlasts it ends in a client-side timeout, logged as a false "unreachable"."""
    if socket_timeout is None or socket_timeout <= 0:
        return idle_wait
    return min(idle_wait, max(socket_timeout * 0.8, socket_timeout - 1.0))
