"""Jobs: named selections of assets that a person, a schedule or a sensor launches."""

from dagster import AssetSelection, define_asset_job

from assets.sessions import RETRAIN_JOB, mark_session_failed

RETRAIN_GROUP = "retrain"
RETRAIN_TAG = "facepipeline/retrain"

retrain_job = define_asset_job(
    name=RETRAIN_JOB,
    selection=AssetSelection.groups(RETRAIN_GROUP),
    description=(
        "Read verified faces, cache photos, embed, build a new index version, evaluate and promote it, write the "
        "descriptors back and record the training session."
    ),
    hooks={mark_session_failed},
    # One retrain at a time: the instance's run queue admits one run with this tag (cli/environment.py
    # writes the limit into dagster.yaml), and the CLI waits for none but refuses to start beside one.
    tags={RETRAIN_TAG: "true"},
)

recognize_job = define_asset_job(
    name="recognize",
    selection=AssetSelection.assets("face_suggestions"),  # partitioned by event, as the asset is
    description="Recognize the faces on one event's new photos with the promoted index; write the suggestions.",
)

cluster_job = define_asset_job(
    name="cluster_unknown_faces",
    selection=AssetSelection.assets("unknown_face_clusters"),
    description="Cluster the faces nobody has named (leaving out rejected clusters) into a new clustering version.",
)

__all__ = ["RETRAIN_TAG", "cluster_job", "recognize_job", "retrain_job"]
