"""Markdown tables from a peers run's JSON (`python -m bench.peers.report [path]`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS
from bench.peers.stats import Summary, ratio, summarize
from bench.peers.systems import systems


def tables(
    records: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Per system: drain (rate summary, RSS, lost/dup), latency, bulk (rate summary);
    drain rows fastest first."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["kind"], r["system"]), []).append(r)
    drain = []
    for (kind, name), rs in by.items():
        if kind != "drain":
            continue
        rate = summarize(r["rate"] for r in rs)
        assert rate is not None
        drain.append(
            {
                "system": name,
                "reps": len(rs),
                "rate": rate,
                "startup": summarize(r["startup_s"] for r in rs),
                "rss_main_mb": max(r["rss_main_mb"] for r in rs),
                "rss_tree_mb": max(r["rss_tree_mb"] for r in rs),
                "worker_cpu_ms_per_1000": summarize(
                    r.get("worker_cpu_s_per_1000", 0) * 1000 for r in rs
                ),
                "redis_cpu_ms_per_1000": summarize(r["redis_cpu_s_per_1000"] * 1000 for r in rs),
                "lost": sum(max(0, r["n"] - r["final"]) for r in rs if not r["timed_out"]),
                "dup": sum(max(0, r["final"] - r["n"]) for r in rs),
                "timed_out": any(r["timed_out"] for r in rs),
            }
        )
    drain.sort(key=lambda row: -row["rate"].median)
    lat = [r for (kind, _), rs in by.items() if kind == "latency" for r in rs]
    bulk = [
        {"system": name, "rate": summarize(r["rate"] for r in rs), "api": rs[0].get("api")}
        for (kind, name), rs in by.items()
        if kind == "bulk"
    ]
    return drain, lat, bulk


def own_work(drain: list[dict[str, Any]], floors: dict[str, str]) -> list[dict[str, Any]]:
    """Per system with a floor row in the run: its worker CPU per 1,000 tasks, its floor's
    (the task body alone in the same runtime), the difference (the system's own work) and
    the floor's drain rate (the ceiling of any worker there). Medians."""
    by = {row["system"]: row for row in drain}
    out = []
    for row in drain:
        floor = by.get(floors.get(row["system"], ""))
        cpu = row["worker_cpu_ms_per_1000"]
        if floor is None or cpu is None or floor["worker_cpu_ms_per_1000"] is None:
            continue
        body = floor["worker_cpu_ms_per_1000"].median
        out.append(
            {
                "system": row["system"],
                "floor": floor["system"],
                "cpu": cpu.median,
                "body": body,
                "own": cpu.median - body,
                "ceiling": floor["rate"],
            }
        )
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def markdown(data: dict[str, Any], floors: dict[str, str] | None = None) -> str:
    """The run's tables; `floors` maps a system to its floor row (default: systems.py's)."""
    if floors is None:
        floors = {name: s.floor for name, s in systems().items() if s.floor}
    drain, lat, bulk = tables(data["records"])
    rates = {row["system"]: row["rate"] for row in drain}
    base: Summary | None = rates.get("bullmq")
    out = [
        "| system | drain tasks/s, median (min-max) | vs BullMQ | startup s | worker CPU ms "
        "/ 1000 tasks | Redis CPU ms / 1000 tasks | peak RSS MB (tree) | lost/dup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in drain:
        r = ratio(row["rate"], base)
        cpu, startup = row["worker_cpu_ms_per_1000"], row["startup"]
        cut = " (cut at 60 s)" if row["timed_out"] else ""
        cells = [
            row["system"],
            row["rate"].text() + cut,
            "-" if r is None else f"{r:.2f}x",
            "-" if startup is None else f"{startup.median:.2f}",
            "-" if cpu is None else f"{cpu.median:.0f}",
            f"{row['redis_cpu_ms_per_1000'].median:.0f}",
            f"{row['rss_main_mb']:.0f} ({row['rss_tree_mb']:.0f})",
            f"{row['lost']}/{row['dup']}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    own = own_work(drain, floors)
    if own:
        out += [
            "",
            "| system | worker CPU ms / 1000 tasks | the body alone (its floor row) | own work "
            "beyond the body | the floor's drain (ceiling) vs BullMQ |",
            "|---|---|---|---|---|",
        ]
        for o in own:
            r = ratio(o["ceiling"], base)
            out.append(
                f"| {o['system']} | {o['cpu']:.0f} | {o['body']:.0f} ({o['floor']}) "
                f"| {o['own']:.0f} | {'-' if r is None else f'{r:.2f}x'} |"
            )
    out += [
        "",
        "| system | offered/s | done when the producer stopped | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in lat:
        out.append(
            f"| {r['system']} | {r['offered']:.0f} | {r['done_at_producer_end']:,}/{r['sent']:,}"
            f" | {_ms(r['p50'])} | {_ms(r['p99'])} | {_ms(r['max'])} |"
        )
    out += ["", "| system | bulk submit tasks/s, median (min-max) | API |", "|---|---|---|"]
    for row in bulk:
        out.append(f"| {row['system']} | {row['rate'].text()} | {row['api']} |")
    return "\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "peers.json"
    print(markdown(json.loads(path.read_text())))
