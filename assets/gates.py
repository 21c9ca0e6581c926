"""A quality gate's verdict (facepipeline.quality) as a Dagster asset check result."""

from dagster import AssetCheckResult, MetadataValue

from facepipeline.quality import GateResult


def check_result(gate: GateResult, check_name: str | None = None, **metadata) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=check_name,
        passed=gate.passed,
        description=gate.summary,
        metadata={"summary": MetadataValue.text(gate.summary), **gate.figures, **metadata},
    )
