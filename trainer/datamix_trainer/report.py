"""The end-of-run report of `datamix run`: a table and a loss-curve PNG, from the run's files only.

Reads `runspec.json`, `results.json` and `history.jsonl` from the run's output directory, so the
same report can be made for a run that trained in a cluster (copy the directory, call `report`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datamix.runspec import RunResult, RunSpec


def load_result(path: Path) -> RunResult:
    doc = json.loads(path.read_text())
    doc["validation_loss"] = tuple(doc["validation_loss"])
    doc["tokens"] = tuple(doc["tokens"])
    doc["epoch_tokens"] = tuple(doc.get("epoch_tokens", ()))  # absent in older results
    return RunResult(**doc)


def load_history(path: Path) -> list[dict[str, Any]]:
    """History records; where a resumed attempt re-ran steps, its records replace the earlier ones."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the last line of a process killed mid-write
            records[(record["kind"], record["step"])] = record
    return sorted(records.values(), key=lambda r: (r["step"], r["kind"]))


def table(spec: RunSpec, result: RunResult) -> str:
    rows = [("dataset", "target share", "realised share", "tokens", "validation loss")]
    for d, share, tokens, loss in zip(
        spec.datasets, result.realised_shares, result.tokens, result.validation_loss, strict=True
    ):
        rows.append((d.name, f"{d.share:.4f}", f"{share:.4f}", f"{tokens:,}", "n/a" if loss is None else f"{loss:.4f}"))
    mean = result.mean_validation_loss
    rows.append(("mean", "", "", f"{sum(result.tokens):,}", "n/a" if mean is None else f"{mean:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def loss_curve(spec: RunSpec, history: list[dict[str, Any]], png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="0.6", lw=1, label="training loss")
    for d in spec.datasets:
        points = [(r["step"], r["validation_loss"].get(d.name)) for r in evals]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.5, label=f"{d.name} (share {d.share:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(f"{spec.experiment} / run {spec.run}: training and per-dataset validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
    return png
