from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from facepipeline.clustering import ClusterStore
from facepipeline.gallery.config import ConfigStore
from facepipeline.index import IndexStore
from facepipeline.sessions import SessionHistory
from facepipeline.photos import PhotoCache
from facepipeline.tables import TableStore


class ArtifactStoreResource(ConfigurableResource):
    """facepipeline's own files under FACEPIPELINE_HOME: photo cache, tables, index versions."""

    home: str = Field(description="Absolute path of FACEPIPELINE_HOME.")
    fetch_concurrency: int = Field(default=8, ge=1, le=64, description="Photos downloaded at once.")
    fetch_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Connect and read timeout per photo.")
    fetch_retries: int = Field(default=2, ge=0, le=10, description="Retries on timeouts and 5xx answers.")

    @property
    def root(self) -> Path:
        return Path(self.home)

    def photo_cache(self) -> PhotoCache:
        return PhotoCache(
            self.root / "photos",
            timeout_s=self.fetch_timeout_s,
            retries=self.fetch_retries,
            concurrency=self.fetch_concurrency,
        )

    def tables(self) -> TableStore:
        return TableStore(self.root / "tables")

    def dataset_snapshots(self) -> TableStore:
        """Every row a retrain read, by dataset fingerprint (see facepipeline.snapshots)."""
        return TableStore(self.root / "datasets")

    def index_store(self) -> IndexStore:
        return IndexStore(self.root / "index")

    def cluster_store(self) -> ClusterStore:
        """Versioned clusterings of unknown faces, and the clusters people rejected."""
        return ClusterStore(self.root / "clusters")

    def history(self) -> SessionHistory:
        """The local ledger of training sessions (readable while the database is down)."""
        return SessionHistory(self.root / "history")

    def config_store(self, source: str, gallery=None) -> ConfigStore:
        return ConfigStore(self.root / "config", source, gallery)
