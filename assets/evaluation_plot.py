"""The evaluation plot: the latest evaluation's threshold sweep and ROC, drawn for people to read.

It is not part of the retrain: promotion waits for the numbers (``index_metrics`` and its check),
never for a picture. Drawing it costs about a second (matplotlib), as much as evaluating an
incremental retrain, so it is its own asset, drawn for the latest evaluation by the
``evaluation_reports`` automation sensor (sensors/reports.py) where the Dagster daemon runs, or by
hand (``dagster asset materialize --select evaluation_plot -m definitions``) where only the CLI does.
"""

from dagster import AssetExecutionContext, AutomationCondition, MaterializeResult, MetadataValue, asset

from assets.errors import failures_explained
from facepipeline.plots import evaluation_png, png_markdown
from facepipeline.versions import replace_file
from resources import ArtifactStoreResource


@asset(
    group_name="reports",
    code_version="1",
    kinds={"python", "png"},
    automation_condition=AutomationCondition.eager(),
)
def evaluation_plot(context: AssetExecutionContext, index_metrics: dict, artifacts: ArtifactStoreResource) -> MaterializeResult:
    """The threshold sweep and the ROC-like curve of the latest evaluation, inline and as a PNG kept
    beside that evaluation (``index/vN/evaluations/<run_id>.png``)."""
    with failures_explained():
        version = artifacts.index_store().named(index_metrics["index_version"])
    png = evaluation_png(index_metrics)
    if png is None:
        context.log.info(f"{version.name}: nothing to plot ({index_metrics.get('message') or index_metrics.get('status')})")
        return MaterializeResult(metadata={"index_version": version.name, "plotted": False})
    image = version.path / "evaluations" / f"{index_metrics['run_id']}.png"
    replace_file(image, png)  # a reader never sees half a picture
    return MaterializeResult(
        metadata={
            "index_version": version.name,
            "plotted": True,
            "evaluation_plot": MetadataValue.md(png_markdown(png, f"{version.name}: threshold sweep and ROC")),
            "evaluation_plot_path": MetadataValue.path(str(image)),
        }
    )
