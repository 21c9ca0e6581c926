"""The verified faces: every face people confirmed, with its person, photo and box."""

import pyarrow as pa
from dagster import AssetExecutionContext, Config, Failure, MetadataValue, Output, asset
from pydantic import Field

from assets.errors import failures_explained
from assets.metadata import bullet_list, markdown_table
from facepipeline.dataset import dataset_fingerprint, dataset_stats, keep_people_with_min_faces, validate_dataset
from facepipeline.faces import faces_to_table
from resources import FaceSourceResource


class VerifiedFacesConfig(Config):
    min_faces_per_person: int = Field(default=3, ge=1, description="Keep only people with at least this many verified faces.")


@asset(group_name="retrain", io_manager_key="table_io_manager", code_version="1", kinds={"python", "parquet"})
def verified_faces(context: AssetExecutionContext, config: VerifiedFacesConfig, face_source: FaceSourceResource) -> Output[pa.Table]:
    """The training set, read from the source and validated (SPEC section 3)."""
    with failures_explained():
        source = face_source.open()
        everyone = source.verified_faces()
    faces = keep_people_with_min_faces(everyone, config.min_faces_per_person)
    stats = dataset_stats(faces)
    validation = validate_dataset(faces)
    for warning in validation.warnings[:20]:
        context.log.warning(warning)
    if len(validation.warnings) > 20:
        context.log.warning(f"... and {len(validation.warnings) - 20} more people with fewer than 5 faces")
    if not validation.ok:
        raise Failure(
            description="; ".join(validation.errors),
            metadata={"source": source.description, "people": stats.people, "faces": stats.faces},
        )
    context.log.info(f"{stats.faces} verified faces of {stats.people} people from {source.description}")
    return Output(
        faces_to_table(faces),
        metadata={
            "source": source.description,
            "people": stats.people,
            "faces": stats.faces,
            "faces_dropped_by_min_faces": len(everyone) - len(faces),
            "min_faces_per_person": stats.min_faces_per_person,
            "max_faces_per_person": stats.max_faces_per_person,
            "avg_faces_per_person": stats.avg_faces_per_person,
            "people_by_face_count": markdown_table(["faces per person", "people"], list(stats.people_by_face_count.items())),
            "warnings": len(validation.warnings),
            "warning_details": bullet_list(validation.warnings),
            "dataset_fingerprint": MetadataValue.text(dataset_fingerprint(faces)),
        },
    )
