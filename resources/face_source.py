from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from facepipeline.errors import SourceError
from facepipeline.gallery.base import Gallery
from facepipeline.gallery.postgres import KEEP_IDLE_S, PostgresGallery
from facepipeline.sources import FaceSource, open_source


class FaceSourceResource(ConfigurableResource):
    """Where verified faces come from, and where descriptors and sessions go back to.

    Secrets are never part of this resource's plain config: the definitions pass them as
    ``EnvVar("SUPABASE_DB_URL")`` / ``EnvVar("SUPABASE_SERVICE_ROLE_KEY")``, which the UI shows by
    name only.
    """

    source: str = Field(
        description="'embedded' (the demo gallery under FACEPIPELINE_HOME), 'postgres' (SUPABASE_DB_URL), "
        "'supabase' (REST: SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY) or 'folder:DIR'."
    )
    database_url: str | None = Field(default=None, repr=False, description="Postgres connection string (from SUPABASE_DB_URL).")
    supabase_url: str | None = Field(default=None, description="The Supabase project URL (from SUPABASE_URL).")
    service_role_key: str | None = Field(default=None, repr=False, description="Supabase service role key (from SUPABASE_SERVICE_ROLE_KEY).")
    embedded_home: str | None = Field(default=None, description="State folder of the embedded gallery.")
    seed_folder: str | None = Field(default=None, description="Photo folder the embedded gallery is seeded from.")
    statement_timeout_s: float = Field(
        default=120.0, ge=1, le=3600,
        description="Seconds one statement may run on the gallery database (Postgres' statement_timeout) before "
        "it is cancelled and the step fails, naming the timeout; write-back reports what it had committed.",
    )
    keep_idle_s: float = Field(
        default=KEEP_IDLE_S, ge=0, le=3600,
        description="Seconds the gallery database connection of one operation stays open for the next one to reuse; "
        "0 opens a connection per operation (for a pooler that drops idle clients).",
    )
    write_batch_size: int = Field(
        default=500, ge=1, le=10_000,
        description="Rows per write-back transaction: a lost database costs at most one batch, redone by the next run.",
    )

    _opened: FaceSource | None = PrivateAttr(default=None)

    def open(self) -> FaceSource:
        """The source, opened once per process (starting the embedded gallery if it is the one)."""
        if self._opened is None:
            self._opened = open_source(
                self.source,
                database_url=self.database_url,
                supabase_url=self.supabase_url,
                service_role_key=self.service_role_key,
                embedded_home=self.embedded_home,
                seed_folder=self.seed_folder,
            )
            if isinstance(self._opened, PostgresGallery):
                self._opened.statement_timeout_s = self.statement_timeout_s
                self._opened.keep_idle_s = self.keep_idle_s
        return self._opened

    def teardown_after_execution(self, context) -> None:
        """The connection the gallery kept for its next operation is closed with the run (or step)."""
        if isinstance(self._opened, PostgresGallery):
            self._opened.close()

    def gallery(self) -> Gallery | None:
        """The source when it is a gallery database (it can be written to), else None."""
        source = self.open()
        return source if isinstance(source, Gallery) else None

    def require_gallery(self, purpose: str) -> Gallery:
        """The gallery, or a clear error for a source that is not one (a folder has no new photos)."""
        gallery = self.gallery()
        if gallery is None:
            raise SourceError(
                f"{purpose} needs a gallery database (source embedded, postgres or supabase); "
                f"{self.open().description} is a folder of verified faces only"
            )
        return gallery
