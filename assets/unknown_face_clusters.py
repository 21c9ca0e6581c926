"""Unknown face clusters: the faces nobody has named, grouped so a person can name a group at once."""

from dagster import AssetExecutionContext, MetadataValue, Output, asset

from assets.errors import failures_explained
from assets.face_suggestions import face_suggestions
from assets.metadata import markdown_table
from facepipeline.clustering import KnownPeople, UnknownFace, cluster_unknown_faces
from resources import ArtifactStoreResource, FaceSourceResource


@asset(group_name="recognize", deps=[face_suggestions], code_version="1", kinds={"python", "hdbscan"})
def unknown_face_clusters(
    context: AssetExecutionContext, face_source: FaceSourceResource, artifacts: ArtifactStoreResource
) -> Output[dict]:
    """Clusters every unverified face without a person (HDBSCAN), leaving out the faces of rejected
    clusters, and suggests a known person for a cluster close to one; published as version cN."""
    with failures_explained():
        gallery = face_source.require_gallery("clustering unknown faces")
        rows = gallery.unknown_faces()
    faces = [UnknownFace(r.face_id, r.photo_id, r.event_id, r.descriptor) for r in rows]
    store = artifacts.cluster_store()
    promoted = artifacts.index_store().promoted()
    known = None
    if promoted is not None:
        index = promoted.load()
        known = KnownPeople.from_vectors(
            index.vectors(), index.entries.column("person_id").to_pylist(), index.entries.column("person_name").to_pylist()
        )
    with failures_explained():
        clustering = cluster_unknown_faces(faces, rejected_face_ids=store.rejected_face_ids(), known=known)
        version = store.publish(
            clustering,
            faces,
            {"run_id": context.run.run_id, "index_version": promoted.name if promoted else None, "source": gallery.description},
        )
    summary = clustering.summary()
    context.log.info(
        f"clustering {version.name}: {summary['clusters']} clusters over {len(faces)} unknown faces, "
        f"{len(clustering.noise)} alone, {len(clustering.excluded)} left out (rejected before)"
    )
    shown = [
        (c.cluster_id, c.size, f"{c.cohesion:.3f}", c.suggested_person_name or c.suggested_person_id or "-",
         "-" if c.suggestion_similarity is None else f"{c.suggestion_similarity:.3f}")
        for c in clustering.clusters[:50]
    ]
    return Output(
        {"version": version.name, **summary},
        metadata={
            "clustering_version": version.name,
            "unknown_faces": len(faces),
            "clusters": len(clustering.clusters),
            "clustered_faces": sum(c.size for c in clustering.clusters),
            "noise_faces": len(clustering.noise),
            "excluded_rejected_faces": len(clustering.excluded),
            "largest_clusters": markdown_table(["cluster", "faces", "cohesion", "suggested person", "similarity"], shown),
            "params": MetadataValue.json(clustering.params),
            "path": MetadataValue.path(str(version.path)),
        },
    )
