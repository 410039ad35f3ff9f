"""The report's charts as base64 PNG strings (matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display on servers
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

_MAX_POINTS = 4000  # a curve needs no more points than a page has pixels
# Predictors that answer alike draw the same curve: vary the dash so none hides another.
_DASHES = ("-", "--", "-.", ":")


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _thin(times: list[float], values: list[float]) -> tuple[list[datetime], list[float]]:
    step = max(1, len(times) // _MAX_POINTS)
    keep = list(range(0, len(times), step))
    if keep and keep[-1] != len(times) - 1:
        keep.append(len(times) - 1)
    return [datetime.fromtimestamp(times[i], UTC) for i in keep], [values[i] for i in keep]


def equity_chart(curves: dict[str, dict[str, list[float]]]) -> str:
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for number, (name, curve) in enumerate(curves.items()):
        times, values = _thin(curve["time"], curve["value"])
        style = {"linestyle": _DASHES[number % len(_DASHES)]}
        if name == "buy_and_hold":
            style = {"color": "black", "linewidth": 2.0, "linestyle": "--"}
        axis.plot(times, values, label=name, **style)
    axis.set_yscale("log")
    axis.set_ylabel("equity (start = 1, log scale)")
    axis.set_title("Equity of each predictor's strategy, after fees, and buy-and-hold")
    axis.legend(fontsize=8, ncol=2)
    axis.grid(alpha=0.3)
    return _png(figure)


def confusion_chart(matrices: dict[str, dict[str, Any]]) -> str:
    count = len(matrices)
    columns = min(count, 4)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.axis("off")
    for axis, (name, confusion) in zip(axes.flat, matrices.items(), strict=False):
        matrix, labels = confusion["matrix"], confusion["labels"]
        axis.imshow(matrix, cmap="Blues")
        for i in range(2):
            for j in range(2):
                axis.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=10)
        axis.set_xticks([0, 1], labels)
        axis.set_yticks([0, 1], labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("actual")
        axis.set_title(name, fontsize=9)
    return _png(figure)


def reliability_chart(calibrations: dict[str, dict[str, Any]]) -> str:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, calibration in calibrations.items():
        filled = [b for b in calibration["bins"] if b["count"]]
        axis.plot(
            [b["mean_p_increase"] for b in filled],
            [b["share_increase"] for b in filled],
            marker="o",
            label=name,
        )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("mean predicted p(Increase)")
    axis.set_ylabel("share that was Increase")
    axis.set_title("Reliability diagram")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _png(figure)


def share_over_time_chart(series: dict[str, Any]) -> str:
    figure, axis = plt.subplots(figsize=(10, 4))
    times = [datetime.fromtimestamp(t, UTC) for t in series["time"]]
    axis.plot(
        times, series["actual"], color="black", linewidth=2, linestyle="--", label="actual share Increase"
    )
    for number, (name, shares) in enumerate(series["predicted"].items()):
        axis.plot(times, shares, marker=".", linestyle=_DASHES[number % len(_DASHES)], label=name)
    axis.set_ylim(-0.02, 1.02)
    axis.set_ylabel("share of rows")
    axis.set_title("Share predicted Increase over time")
    axis.legend(fontsize=8, ncol=2)
    axis.grid(alpha=0.3)
    return _png(figure)
