"""What `streamrec evaluate --chart/--report` writes: quality over the stream.

`HitLog` records, per model, whether each scored prediction was a hit within the top
K; `windows` turns that into HR@K per consecutive window of predictions, which the PNG
chart plots one line per model, so a reader sees how quality moves while the models
learn. The markdown report holds the run's table, the chart and how it was made.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class HitLog:
    """Per-model hit/miss sequence at cut-off `k`, fed by the protocols' on_prediction."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.hits: dict[str, list[bool]] = {}

    def recorder(self, model: str) -> Any:
        sequence = self.hits.setdefault(model, [])

        def on_prediction(user_id: str, ranked: list[str], target: str) -> None:
            sequence.append(target in ranked[: self.k])

        return on_prediction

    def windows(self, size: int) -> dict[str, list[tuple[int, float]]]:
        """model -> [(predictions so far, HR@k within the window ending there)]."""
        result: dict[str, list[tuple[int, float]]] = {}
        for model, sequence in self.hits.items():
            points = []
            for start in range(0, len(sequence), size):
                window = sequence[start : start + size]
                points.append((start + len(window), sum(window) / len(window)))
            result[model] = points
        return result


def write_chart(
    path: Path, windows: Mapping[str, Sequence[tuple[int, float]]], *, k: int, title: str
) -> None:
    """A PNG line chart of HR@k per window, one line per model."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    for model, points in windows.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=model)
    axes.set_xlabel("scored predictions")
    axes.set_ylabel(f"HR@{k} per window")
    axes.set_ylim(0, 1)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def write_report(
    path: Path, *, table: str, command: Sequence[str], chart: Path | None, window: int, k: int
) -> None:
    """A short markdown report: the command, the machine, the table, the chart."""
    import torch

    lines = [
        "# streamrec evaluation",
        "",
        f"Command: `streamrec {' '.join(command)}`",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python "
        f"{sys.version.split()[0]}, torch {torch.__version__}, one torch thread.",
        "",
        "```",
        table,
        "```",
        "",
    ]
    if chart is not None:
        relative = Path(chart).name if Path(chart).parent == Path(path).parent else str(chart)
        lines += [
            f"HR@{k} over the stream, per window of {window:,} scored predictions:",
            "",
            f"![HR@{k} per window]({relative})",
            "",
        ]
    Path(path).write_text("\n".join(lines))
