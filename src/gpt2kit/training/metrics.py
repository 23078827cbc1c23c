"""metrics.csv and the loss-curve PNG in the run folder, updated as training goes."""

from __future__ import annotations

import csv
from pathlib import Path

from .. import durable

FIELDS = ["step", "elapsed_s", "loss", "avg_loss", "lr", "tokens_per_s", "val_loss", "val_ppl"]


def append_metrics(run_dir: Path, row: dict) -> None:
    path = run_dir / "metrics.csv"
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop rows past the restored step (they belong to the part that was lost)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    rows = [r for r in _read_rows(path) if int(r["step"]) <= step]
    with durable.atomic_open(path, "w", newline="") as f:  # a kill mid-rewrite keeps the old file whole
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def plot_losses(run_dir: Path, title: str = "") -> Path | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    # A Figure of its own, not pyplot's: pyplot's global state would switch a notebook's or script's
    # backend under it, and is not safe beside a caller's own plotting on another thread.
    from matplotlib.figure import Figure

    rows = _read_rows(path)
    train = [(int(r["step"]), float(r["avg_loss"])) for r in rows if r["avg_loss"]]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train (running average)")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "loss.png"
    tmp = run_dir / ".loss.tmp.png"
    fig.savefig(tmp)
    durable.replace(tmp, out)
    return out


def _read_rows(path: Path) -> list[dict]:
    """The whole rows of metrics.csv: a last line without its newline was cut by a kill and is dropped."""
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    return [r for r in csv.DictReader(lines) if (r.get("step") or "").isdigit()]
