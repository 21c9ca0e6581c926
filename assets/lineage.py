"""What a model version is made of, for its manifest: the code, the run, the training session."""

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from dagster import AssetExecutionContext

REPO = Path(__file__).resolve().parents[1]


def code_versions(context: AssetExecutionContext) -> dict[str, str]:
    """The ``code_version`` of every asset of the run's job: which code made each step's data."""
    graph = context.job_def.asset_layer.asset_graph
    return {
        key.to_user_string(): graph.get(key).code_version
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
        if graph.get(key).code_version
    }


def software() -> dict[str, str | None]:
    """facepipeline's, Dagster's and onnxruntime's versions, and the checkout's commit when there is one."""
    found = {}
    for package in ("facepipeline", "dagster", "onnxruntime", "hnswlib"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        found["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        found["git_commit"] = None
    return found
