"""Pictures of an evaluation, as PNG bytes for a materialization's metadata (and a table's rows).

Every function takes the evaluation as the plain dict ``Evaluation.as_dict()`` gives (what
metrics.json holds and the Dagster asset has, perhaps with ``index_version`` added). An evaluation
that is not ``ok`` (too few samples) gives ``None`` / ``[]``, never an error.

Figures are drawn with matplotlib's object API on an Agg canvas: no global backend, no pyplot
state, so it is safe in a code location and from threads. matplotlib is imported on the first
drawing (about a second), not when a code location imports this module.

* the threshold sweep: FAR on a log axis (left), recall and precision (right) against the
  threshold, the recommended threshold and the target FAR marked. A FAR of 0 cannot be drawn on a
  log axis, and with N stranger searches nothing below 1/N (``far_resolution``) can be measured:
  such points are drawn at 1/N, and the band below it is greyed.
* the ROC-like curve: recall (probes named right) against FAR on a log axis, from the same
  sweep, with the recommended operating point marked.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
WIDTH_IN = 9.0  # 900 px
FAR_COLOUR, RECALL_COLOUR, PRECISION_COLOUR, CHOSEN_COLOUR = "#c0392b", "#2471a3", "#1e8449", "#555555"
PER_PERSON_COLUMNS = ("person", "person_id", "probes", "correct", "rank1_accuracy", "genuine_similarity_mean", "confused_with")


def threshold_sweep_png(metrics: Mapping) -> bytes | None:
    """FAR (log), recall and precision against the threshold: 900 x 450 px."""
    figure = threshold_sweep_figure(metrics)
    return _png(figure) if figure is not None else None


def roc_png(metrics: Mapping) -> bytes | None:
    """Recall against FAR (log), the recommended point marked: 900 x 450 px."""
    figure = roc_figure(metrics)
    return _png(figure) if figure is not None else None


def evaluation_png(metrics: Mapping) -> bytes | None:
    """Both panels side by side, the sweep left and the ROC-like curve right: 900 x 420 px."""
    figure = evaluation_figure(metrics)
    return _png(figure) if figure is not None else None


def threshold_sweep_figure(metrics: Mapping) -> Figure | None:
    if not _plottable(metrics):
        return None
    figure = _figure(4.5)
    _finish(figure, metrics, _draw_sweep(figure.add_subplot(), metrics))
    return figure


def roc_figure(metrics: Mapping) -> Figure | None:
    if not _plottable(metrics):
        return None
    figure = _figure(4.5)
    _finish(figure, metrics, _draw_roc(figure.add_subplot(), metrics))
    return figure


def evaluation_figure(metrics: Mapping) -> Figure | None:
    if not _plottable(metrics):
        return None
    figure = _figure(4.2)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    _finish(figure, metrics, _draw_sweep(left, metrics) + _draw_roc(right, metrics))
    return figure


def per_person_rows(metrics: Mapping, names: Mapping[str, str] | None = None, limit: int = 50) -> list[dict]:
    """The worst-named people first, as rows for a table (``PER_PERSON_COLUMNS``); ``names`` maps
    person ids to names, for ``person`` and ``confused_with`` (ids are kept where unknown)."""
    if metrics.get("status") != "ok":
        return []
    names = names or {}
    people = sorted(
        metrics.get("per_person") or [],
        key=lambda p: (p["rank1_accuracy"], -p["probes"], p["person_id"]),
    )
    rows = []
    for person in people[: max(0, limit)]:
        confused = person.get("confused_with")
        rows.append({
            "person": names.get(person["person_id"], person["person_id"]),
            "person_id": person["person_id"],
            "probes": person["probes"],
            "correct": person["correct"],
            "rank1_accuracy": person["rank1_accuracy"],
            "genuine_similarity_mean": person.get("genuine_similarity_mean"),
            "confused_with": names.get(confused, confused) if confused is not None else None,
        })
    return rows


def png_markdown(png: bytes, alt: str) -> str:
    """A markdown image with the PNG inline (a base64 data URI), as Dagster's markdown metadata shows it."""
    alt = alt.replace("[", "(").replace("]", ")").replace("\n", " ")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _plottable(metrics: Mapping) -> bool:
    return metrics.get("status") == "ok" and bool(metrics.get("sweep"))


def _figure(height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Margins are set by _finish, in inches: matplotlib's constrained layout measures every tick
    # label first, which cost more than drawing the figure (~0.5 s of a retrain's ~1 s of plotting).
    figure = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out.getvalue()


def _finish(figure: Figure, metrics: Mapping, axes: list) -> None:
    """The title, one legend under the panels (each label once), and the margins they need."""
    title = textwrap.wrap(_title(metrics), 100)
    height = figure.get_figheight()
    figure.suptitle("\n".join(title), fontsize=11, y=1 - 0.08 / height, va="top")
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    figure.legend(list(entries.values()), list(entries), loc="lower center", bbox_to_anchor=(0.5, 0.04 / height), ncol=4,
                  fontsize=8, frameon=False)
    legend_rows = -(-len(entries) // 4)
    side = 0.8 / WIDTH_IN  # tick labels and an axis label on each side (the sweep's twin axis on the right)
    figure.subplots_adjust(
        left=side, right=1 - side, top=1 - (0.4 + 0.19 * len(title)) / height, bottom=(0.68 + 0.17 * legend_rows) / height,
        wspace=0.5,
    )


def _title(metrics: Mapping) -> str:
    parts = []
    if metrics.get("index_version"):
        parts.append(f"index {metrics['index_version']}")
    if metrics.get("rank1_accuracy") is not None:
        rank1 = f"rank-1 {metrics['rank1_accuracy']:.1%}"
        if metrics.get("rank1_accuracy_macro") is not None:
            rank1 += f" (per person {metrics['rank1_accuracy_macro']:.1%})"
        parts.append(rank1)
    parts.append(f"{metrics.get('probe_faces', 0)} probes, {metrics.get('people', 0)} people")
    if metrics.get("far_verifiable") is False:
        parts.append(f"target FAR {metrics.get('target_far'):g} unverifiable ({metrics.get('impostor_trials')} strangers)")
    elif metrics.get("target_met") is False:
        parts.append(f"target FAR {metrics.get('target_far'):g} not met")
    return " · ".join(parts)


def _far_floor(metrics: Mapping) -> float:
    """The lowest FAR drawn: 1/N stranger searches (a measured 0 is drawn there)."""
    resolution = metrics.get("far_resolution")
    if resolution:
        return float(resolution)
    positive = [p["far"] for p in metrics["sweep"] if p["far"] > 0]
    return min(positive) if positive else 1e-4


def _far_limits(metrics: Mapping) -> tuple[float, float]:
    floor = _far_floor(metrics)
    lowest = min(floor, metrics.get("target_far") or floor)
    return lowest / 2, 1.3


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _powers_of_ten(axis) -> None:
    """Log-axis labels 10⁻³ in plain text: matplotlib's default writes them in mathtext, whose parser
    costs more to set up than the whole drawing."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def label(value: float, _position) -> str:
        if value <= 0:
            return ""
        power = round(math.log10(value))
        return "1" if power == 0 else "10" + str(power).translate(_SUPERSCRIPT)

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(NullFormatter())


def _draw_sweep(ax, metrics: Mapping) -> list:
    sweep = metrics["sweep"]
    floor = _far_floor(metrics)
    thresholds = [p["threshold"] for p in sweep]
    bottom, top = _far_limits(metrics)
    ax.set_yscale("log")
    _powers_of_ten(ax.yaxis)
    ax.set_ylim(bottom, top)
    ax.set_xlim(0, 1)
    ax.axhspan(bottom, floor, color="#000000", alpha=0.07, lw=0, label=f"FAR < 1/{round(1 / floor)}: not measurable")
    ax.plot(thresholds, [max(p["far"], floor) for p in sweep], color=FAR_COLOUR, lw=2, label="FAR (left, log)")
    if metrics.get("target_far"):
        ax.axhline(metrics["target_far"], color=FAR_COLOUR, lw=1, ls=":", label=f"target FAR {metrics['target_far']:g}")
    chosen = metrics.get("recommended_threshold")
    if chosen is not None:
        ax.axvline(chosen, color=CHOSEN_COLOUR, lw=1.2, ls="--", label=f"recommended threshold {chosen:.2f}")
    ax.set_xlabel("threshold (cosine similarity)")
    ax.set_ylabel("false-accept rate", color=FAR_COLOUR)
    ax.tick_params(axis="y", colors=FAR_COLOUR)
    ax.grid(True, which="major", alpha=0.3)

    rates = ax.twinx()
    rates.plot(thresholds, [p["recall"] for p in sweep], color=RECALL_COLOUR, lw=2, label="recall (right)")
    rates.plot(thresholds, [p["precision"] for p in sweep], color=PRECISION_COLOUR, lw=2, ls="-.", label="precision (right)")
    rates.set_ylim(0, 1.02)
    rates.set_ylabel("recall / precision")
    ax.set_title("threshold sweep", fontsize=10)
    return [ax, rates]


def _draw_roc(ax, metrics: Mapping) -> list:
    sweep = sorted(metrics["sweep"], key=lambda p: p["threshold"], reverse=True)  # FAR rising
    floor = _far_floor(metrics)
    bottom, top = _far_limits(metrics)
    ax.set_xscale("log")
    _powers_of_ten(ax.xaxis)
    ax.set_xlim(bottom, top)
    ax.set_ylim(0, 1.02)
    ax.axvspan(bottom, floor, color="#000000", alpha=0.07, lw=0, label=f"FAR < 1/{round(1 / floor)}: not measurable")
    ax.plot([max(p["far"], floor) for p in sweep], [p["recall"] for p in sweep], color=RECALL_COLOUR, lw=2,
            marker=".", ms=3, label="recall vs FAR, threshold 1.00 → 0.00")
    if metrics.get("target_far"):
        ax.axvline(metrics["target_far"], color=FAR_COLOUR, lw=1, ls=":", label=f"target FAR {metrics['target_far']:g}")
    chosen = metrics.get("recommended_threshold")
    point = next((p for p in sweep if p["threshold"] == chosen), None)
    if point is not None:
        x = max(point["far"], floor)
        ax.plot([x], [point["recall"]], marker="o", ms=8, mfc="none", mec=CHOSEN_COLOUR, mew=2, ls="none",
                label=f"recommended threshold {chosen:.2f}")
        ax.annotate(f"{chosen:.2f}: recall {point['recall']:.2f}, FAR {point['far']:.2g}", (x, point["recall"]),
                    xytext=(8, -14 if point["recall"] > 0.15 else 8), textcoords="offset points", fontsize=8, color=CHOSEN_COLOUR)
    ax.set_xlabel("false-accept rate (log)")
    ax.set_ylabel("recall (probes named right)")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title("recall vs FAR", fontsize=10)
    return [ax]
