"""The Dagster UI in a real browser: headless Chromium (Debian's package) driven by Playwright.

A real ``dagster dev`` serves a throw-away home after one retrain through the CLI (folder source,
no database). The test opens the ``retrain`` asset group's graph, finds every retrain asset by name,
then each asset's Checks tab and the check on it, and saves screenshots as test artifacts
(``$FACEPIPELINE_TEST_ARTIFACTS``, else ``test-artifacts/ui/`` in the checkout). The same names are
read from the server's GraphQL API, so a failure says whether the definitions or the UI lack them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_ROOT, PACK, REPO, copy_people, people_with_most_photos
from tests.dagster_dev import running_dagster_dev

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
RETRAIN_ASSETS = [
    "verified_faces", "cached_photos", "face_embeddings", "face_index",
    "index_metrics", "promoted_index", "face_descriptors", "training_session",
]  # fmt: skip
CHECKS = {  # asset -> the check defined on it
    "verified_faces": "dataset_valid",
    "face_embeddings": "embeddings_sane",
    "face_index": "index_consistent",
    "index_metrics": "no_regression",
}
GROUP_URL = "/locations/facepipeline/asset-groups/retrain"  # the group's lineage (graph) tab
ASSET_NODES_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name } }
    }
  }
}
"""


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("FACEPIPELINE_TEST_ARTIFACTS") or REPO / "test-artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def assert_screenshot(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes: an empty page?"
    print(f"screenshot: {path} ({len(data) // 1024} kB)")


def test_asset_graph_shows_the_retrain_assets_and_their_checks(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package; `make test` installs it)")
    from playwright.sync_api import expect, sync_playwright

    faces = copy_people(tmp_path / "faces", people_with_most_photos(6), 8)
    home = tmp_path / "home"
    env = {
        "FACEPIPELINE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "FACEPIPELINE_SOURCE": f"folder:{faces}",
        "FACEPIPELINE_MODEL_ROOT": str(MODEL_ROOT),
        "FACEPIPELINE_MODEL": PACK,
    }
    # One retrain first, on the same instance, so the graph shows materialized assets.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith(("FACEPIPELINE_", "DAGSTER_", "SUPABASE_"))}
    retrain = subprocess.run(
        [str(Path(sys.executable).with_name("facepipeline")), "retrain", "--source", f"folder:{faces}", "--json"],
        env=cli_env | env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert retrain.returncode == 0, retrain.stderr[-3000:]

    artifacts = artifacts_dir()
    with running_dagster_dev(env) as dev, sync_playwright() as playwright:
        # What the definitions hold, from the same server: tells a UI failure from a definitions one.
        nodes = {tuple(n["assetKey"]["path"]): n for n in dev.graphql(ASSET_NODES_QUERY)["assetNodes"]}
        in_group = {key[-1] for key, n in nodes.items() if n["groupName"] == "retrain"}
        defined_checks = {
            key[-1]: {c["name"] for c in (n["assetChecksOrError"] or {}).get("checks", [])} for key, n in nodes.items()
        }
        dev.graphql("mutation { setNuxSeen }")  # else a "Join the Dagster community" dialog covers the page

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(30_000)

            page.goto(dev.base_url + GROUP_URL)
            graph = page.locator("svg foreignObject")  # each asset node is HTML inside the graph's SVG
            not_shown = []
            for name in RETRAIN_ASSETS:
                try:
                    expect(graph.get_by_text(name, exact=True).first).to_be_visible()
                except AssertionError:
                    not_shown.append(name)
            page.wait_for_timeout(1000)  # let the zoom-to-fit settle before the picture
            page.screenshot(path=artifacts / "asset-graph.png")
            assert not not_shown, (
                f"the asset graph at {GROUP_URL} does not show {not_shown}; "
                f"the definitions' retrain group has {sorted(in_group)}\n{dev.log_tail(40)}"
            )

            missing_in_definitions = {a: c for a, c in CHECKS.items() if c not in defined_checks.get(a, set())}
            missing_in_ui = {}
            for asset, check in CHECKS.items():
                page.goto(f"{dev.base_url}/assets/{asset}?view=checks")
                expect(page.get_by_role("tab", name="Checks")).to_be_visible()
                try:
                    # The check list on the left shows each check's name with a title attribute.
                    expect(page.get_by_title(check, exact=True).first).to_be_visible(timeout=15_000)
                except AssertionError:
                    missing_in_ui[asset] = check
                page.screenshot(path=artifacts / f"checks-{asset}.png")
        finally:
            browser.close()

    have = {asset: sorted(checks) for asset, checks in defined_checks.items() if checks}
    assert not missing_in_ui and not missing_in_definitions, (
        f"checks not shown on the asset's Checks tab: {missing_in_ui}; "
        f"checks the definitions lack (GraphQL): {missing_in_definitions}; the definitions have {have}"
    )
    for name in ["asset-graph.png", *(f"checks-{a}.png" for a in CHECKS)]:
        assert_screenshot(artifacts / name)
