"""The ``prune_home`` job: what ``facepipeline prune`` does, from the UI or on a schedule.

It removes old index and clustering versions, the step outputs of older runs, dataset snapshots
no kept version needs and cached photos nothing kept uses (facepipeline.retention says which, and
why the rest is kept). Runs still under way keep their outputs, and so do the runs they
re-execute; the newest versions, the promoted one and those it can roll back to are never
removed, and what a retrain writes while the prune runs is looked at again before anything goes.
One prune at a time per home.
"""

from dagster import Config, DagsterInstance, Failure, MetadataValue, Nothing, OpExecutionContext, Out, Output, RunsFilter, job, op
from filelock import FileLock, Timeout
from pydantic import Field

from facepipeline.errors import FacePipelineError
from facepipeline.index import who
from facepipeline.retention import DEFAULT_KEEP, PHOTO_GRACE_S, PrunePlan, PruneReport, apply_prune, plan_prune
from jobs.run_guard import UNDER_WAY, release_stale_runs
from resources import ArtifactStoreResource

PRUNE_LOCK = "prune.lock"


def prune_home(
    instance: DagsterInstance, artifacts: ArtifactStoreResource, *, keep: int, dry_run: bool, reason: str, by: str,
    photo_grace_s: float = PHOTO_GRACE_S,
) -> tuple[PrunePlan, PruneReport | None]:
    """The plan for ``keep``, and unless ``dry_run`` what came of carrying it out."""
    artifacts.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(artifacts.root / PRUNE_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FacePipelineError(f"another prune of {artifacts.root} is in progress") from None
    try:
        index, clusters = artifacts.index_store(), artifacts.cluster_store()
        snapshots, tables = artifacts.dataset_snapshots(), artifacts.tables()
        plan = plan_prune(index=index, clusters=clusters, snapshots=snapshots, outputs=artifacts.root / "outputs", keep=keep,
                          runs_kept=runs_to_keep(instance), photos=artifacts.photos_root, tables=tables,
                          photo_grace_s=photo_grace_s)
        if dry_run:
            return plan, None
        # Looked at again: a re-execution launched while the plan was made keeps its ancestors' outputs.
        return plan, apply_prune(plan, index=index, clusters=clusters, reason=reason, by=by,
                                 runs_kept=runs_to_keep(instance), snapshots=snapshots, tables=tables)
    finally:
        lock.release()


def runs_to_keep(instance: DagsterInstance) -> set[str]:
    """The runs whose step outputs stay: those under way (a killed CLI's run is reported failed
    first) and every run they re-execute, up their chain of parents: an output a re-execution does
    not make again is reloaded from the nearest ancestor that made it."""
    release_stale_runs(instance)
    kept: set[str] = set()
    for run in instance.get_runs(RunsFilter(statuses=UNDER_WAY)):
        while run is not None and run.run_id not in kept:
            kept.add(run.run_id)
            run = instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    return kept


class PruneConfig(Config):
    keep: int = Field(default=DEFAULT_KEEP, ge=1, le=1_000_000,
                      description="The newest N of each kept, with the promoted index version and the N it can roll back to.")
    dry_run: bool = Field(default=False, description="Only say what would be removed.")
    photo_grace_days: float = Field(default=PHOTO_GRACE_S / 86400, ge=0, le=36500,
                                    description="Cached photos fetched this recently stay, used or not.")


@op(out=Out(Nothing))
def prune(context: OpExecutionContext, config: PruneConfig, artifacts: ArtifactStoreResource):
    """Remove what the home no longer needs (module docstring)."""
    plan, report = prune_home(context.instance, artifacts, keep=config.keep, dry_run=config.dry_run,
                              reason=f"the prune_home job, keep {config.keep}, run {context.run_id}", by=who(),
                              photo_grace_s=config.photo_grace_days * 86400)
    context.log.info(("would remove " if report is None else "removing ") + plan.line())
    metadata = {
        "plan": plan.line(), "bytes_planned": plan.bytes, "dry_run": config.dry_run, "kept": MetadataValue.json(plan.kept),
        "removals": MetadataValue.md("\n".join(
            ["| kind | name | MiB |", "| --- | --- | ---: |"]
            + [f"| {r.kind} | {r.name} | {r.bytes / 2**20:.1f} |" for r in plan.removals]
        )),
    }
    if report is not None:
        context.log.info(report.line())
        metadata.update(report.as_dict())  # its two dicts become JSON metadata
        if report.failed:
            raise Failure(description=f"{report.line()}: {report.failed}", metadata=metadata)
    yield Output(None, metadata=metadata)


@job(name="prune_home", description="Remove old index and clustering versions, older runs' step outputs, unneeded dataset snapshots and unused cached photos.")
def prune_job():
    prune()
