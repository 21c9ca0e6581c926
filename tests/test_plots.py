"""The evaluation's pictures and per-person rows, drawn from real evaluations of synthetic faces."""

import base64
import io
import json
import random

import numpy as np
import pytest
from dagster import TableRecord
from PIL import Image

from facepipeline.metrics import EvaluationConfig, evaluate
from facepipeline.plots import (
    PER_PERSON_COLUMNS,
    evaluation_figure,
    evaluation_png,
    per_person_rows,
    png_markdown,
    roc_figure,
    roc_png,
    threshold_sweep_figure,
    threshold_sweep_png,
)
from tests.test_index import clustered
from tests.test_metrics import twins_and_strangers


def metrics_of(spread: float, seed: int = 3, target_far: float = 0.01, version: str = "v7") -> dict:
    """What the asset has: the evaluation as a dict, through JSON as metrics.json holds it."""
    vectors, entries = clustered(30, 8, spread=spread, seed=seed)
    result = evaluate(vectors, entries.column("person_id").to_pylist(), EvaluationConfig(target_far=target_far))
    assert result.status == "ok"
    return {**json.loads(json.dumps(result.as_dict())), "index_version": version}


@pytest.fixture(scope="module")
def overlapping() -> dict:
    return metrics_of(spread=1.5)


@pytest.fixture(scope="module")
def separated() -> dict:
    return metrics_of(spread=0.1)


def pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    image.load()
    return np.asarray(image.convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize(("draw", "size"), [(evaluation_png, (900, 420)), (threshold_sweep_png, (900, 450)), (roc_png, (900, 450))])
def test_the_pngs_decode_at_their_size_small_and_not_blank(overlapping, draw, size):
    png = draw(overlapping)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 150_000
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == size
    array = pixels(png)
    assert array.std() > 20  # lines and text on white, not an empty canvas
    assert (array < 100).all(axis=2).mean() > 0.005  # some dark ink: axes, labels
    assert draw(overlapping) == png  # the same evaluation draws the same bytes


def test_the_sweep_panel_has_far_on_a_log_axis_clipped_at_its_resolution_and_the_chosen_point_marked(overlapping):
    figure = threshold_sweep_figure(overlapping)
    far_axis, rates_axis = figure.axes
    assert far_axis.get_yscale() == "log" and rates_axis.get_yscale() == "linear"
    resolution = overlapping["far_resolution"]
    assert far_axis.get_ylim()[0] < resolution
    lines = {line.get_label(): line for line in far_axis.get_lines() + rates_axis.get_lines()}
    far = np.asarray(lines["FAR (left, log)"].get_ydata())
    assert far.min() == resolution and far.max() == 1.0  # a FAR of 0 is drawn at 1/N, not lost
    sweep = overlapping["sweep"]
    assert list(lines["recall (right)"].get_ydata()) == [p["recall"] for p in sweep]
    assert list(lines["precision (right)"].get_ydata()) == [p["precision"] for p in sweep]
    chosen = lines[f"recommended threshold {overlapping['recommended_threshold']:.2f}"]
    assert list(chosen.get_xdata()) == [overlapping["recommended_threshold"]] * 2
    assert list(lines["target FAR 0.01"].get_ydata()) == [0.01, 0.01]
    title = figure.get_suptitle()
    assert "index v7" in title and f"rank-1 {overlapping['rank1_accuracy']:.1%}" in title


def test_the_roc_panel_plots_recall_against_far_on_a_log_axis(overlapping):
    (ax,) = roc_figure(overlapping).axes
    assert ax.get_xscale() == "log"
    curve, point = (line for line in ax.get_lines() if line.get_label() != "target FAR 0.01")
    resolution = overlapping["far_resolution"]
    by_far = sorted(overlapping["sweep"], key=lambda p: p["threshold"], reverse=True)
    assert list(curve.get_xdata()) == [max(p["far"], resolution) for p in by_far]
    assert list(curve.get_ydata()) == [p["recall"] for p in by_far]
    assert np.all(np.diff(curve.get_xdata()) >= 0)  # FAR only rises as the threshold falls
    assert (point.get_xdata()[0], point.get_ydata()[0]) == (max(overlapping["far"], resolution), overlapping["recall"])


def test_the_side_by_side_figure_has_both_panels(overlapping):
    figure = evaluation_figure(overlapping)
    assert [ax.get_title() for ax in figure.axes] == ["threshold sweep", "recall vs FAR", ""]  # the sweep's twin axis last
    assert figure.axes[0].get_yscale() == "log" and figure.axes[1].get_xscale() == "log"


def test_different_evaluations_draw_different_curves(overlapping, separated):
    assert separated["rank1_accuracy"] == 1.0 and overlapping["rank1_accuracy"] < 0.9
    plot_area = slice(60, 330)  # below the title, above the legend
    a, b = pixels(evaluation_png(overlapping))[plot_area], pixels(evaluation_png(separated))[plot_area]
    for panel in (slice(0, 450), slice(450, 900)):  # the sweep, the ROC-like curve
        assert np.abs(a[:, panel] - b[:, panel]).mean() > 2.0
    # A new name alone changes the title, not the curves.
    renamed = pixels(evaluation_png({**overlapping, "index_version": "v8"}))
    assert np.array_equal(renamed[plot_area], a) and not np.array_equal(renamed[:40], pixels(evaluation_png(overlapping))[:40])


def test_an_evaluation_with_too_few_samples_draws_nothing_and_raises_nothing():
    vectors, entries = clustered(3, 3)
    metrics = evaluate(vectors, entries.column("person_id").to_pylist()).as_dict()
    assert metrics["status"] == "too_few_samples"
    assert threshold_sweep_png(metrics) is None and roc_png(metrics) is None and evaluation_png(metrics) is None
    assert evaluation_figure(metrics) is None and per_person_rows(metrics) == []
    assert per_person_rows({"status": "ok"}) == [] and evaluation_png({"status": "ok", "sweep": []}) is None


def test_per_person_rows_worst_first_with_names_where_known():
    vectors, people = twins_and_strangers()
    metrics = json.loads(json.dumps(evaluate(vectors, people, EvaluationConfig(target_far=0.01)).as_dict()))
    random.Random(0).shuffle(metrics["per_person"])  # the rows are ordered here, whatever the dict's order
    rows = per_person_rows(metrics, names={"twin-a": "Anna", "twin-b": "Bea", "p1": "Piet"})
    assert [(r["person"], r["person_id"], r["correct"], r["probes"], r["confused_with"]) for r in rows] == [
        ("Bea", "twin-b", 2, 4, "Anna"),
        ("Anna", "twin-a", 3, 4, "Bea"),
        ("Piet", "p1", 4, 4, None),
        ("p2", "p2", 4, 4, None),
        ("p3", "p3", 4, 4, None),
        ("p4", "p4", 4, 4, None),
    ]
    assert all(tuple(row) == PER_PERSON_COLUMNS for row in rows)
    assert rows[0]["rank1_accuracy"] == 0.5 and 0 < rows[0]["genuine_similarity_mean"] <= 1
    assert [TableRecord(row).data for row in rows] == rows  # valid for Dagster's table metadata
    assert [r["person_id"] for r in per_person_rows(metrics, limit=2)] == ["twin-b", "twin-a"]
    assert per_person_rows(metrics)[0]["person"] == "twin-b" and per_person_rows(metrics, limit=0) == []


def test_png_markdown_embeds_the_bytes_as_a_data_uri(overlapping):
    png = evaluation_png(overlapping)
    markdown = png_markdown(png, "evaluation of v7 [held out]")
    assert markdown.startswith("![evaluation of v7 (held out)](data:image/png;base64,") and markdown.endswith(")")
    assert base64.b64decode(markdown.split("base64,", 1)[1][:-1]) == png
