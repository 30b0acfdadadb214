"""The side-by-side plot of a peers run: drain tasks/s (median, min-max bars; the floor
rows, the task body with no queue, hatched) and submit->start p50/p99 at the offered
rate."""

from __future__ import annotations

import json
from pathlib import Path

from bench.peers.report import tables


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    drain, lat, _ = tables(data["records"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = [row["system"] for row in drain]
    med = [row["rate"].median for row in drain]
    err = [
        [row["rate"].median - row["rate"].low for row in drain],
        [row["rate"].high - row["rate"].median for row in drain],
    ]
    colors = [
        "tab:green" if n == "kubeq" else "tab:olive" if n.startswith("kubeq") else "tab:gray"
        for n in names
    ]
    bars = a.bar(names, med, yerr=err, color=colors, capsize=4)
    for bar, n in zip(bars, names, strict=True):
        if n.startswith("floor-"):  # not a queue: the body alone, the runtime's ceiling
            bar.set(facecolor="white", edgecolor="tab:gray", hatch="//")
    a.set_yscale("log")
    a.set_ylabel("tasks/s (median, min-max; log)")
    a.set_title(f"drain {data['params']['n']:,} tasks, one worker process")
    a.tick_params(axis="x", rotation=30)
    ln = [row["system"] for row in lat]
    x = range(len(ln))
    b.bar([i - 0.2 for i in x], [row["p50"] for row in lat], 0.4, label="p50")
    b.bar([i + 0.2 for i in x], [row["p99"] for row in lat], 0.4, label="p99")
    b.set_xticks(list(x), ln, rotation=30)
    b.set_yscale("log")
    b.set_ylabel("submit -> start, ms (log)")
    b.set_title(f"latency at {data['params']['rate']:.0f} tasks/s offered")
    b.legend()
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
