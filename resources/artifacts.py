import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from facepipeline.clustering import ClusterStore
from facepipeline.gallery.config import ConfigStore
from facepipeline.gallery.ledger import WriteBackLedger
from facepipeline.index import IndexStore
from facepipeline.sessions import SessionHistory
from facepipeline.photo_policy import PHOTO_HOSTS_ENV, PhotoPolicy, parse_hosts, policy_for_source
from facepipeline.photos import PhotoCache
from facepipeline.tables import TableStore


class ArtifactStoreResource(ConfigurableResource):
    """facepipeline's own files under FACEPIPELINE_HOME: photo cache, tables, index versions."""

    home: str = Field(description="Absolute path of FACEPIPELINE_HOME.")
    fetch_concurrency: int = Field(default=8, ge=1, le=64, description="Photos downloaded at once.")
    fetch_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Connect and read timeout per photo.")
    fetch_retries: int = Field(default=2, ge=0, le=10, description="Retries on timeouts and 5xx answers.")
    photo_hosts: str | None = Field(
        default=None,
        description="Hosts photos may be fetched from besides the source's own (comma-separated host or host:port; "
        f"an IP literal allows that private address). Unset: the {PHOTO_HOSTS_ENV} environment variable.",
    )

    @property
    def root(self) -> Path:
        return Path(self.home)

    def extra_photo_hosts(self) -> str | None:
        return self.photo_hosts if self.photo_hosts is not None else os.environ.get(PHOTO_HOSTS_ENV)

    def photo_policy(self, face_source=None) -> PhotoPolicy:
        """What may be fetched: the source's own photo host (``face_source``: a FaceSourceResource,
        read for its configuration only, nothing opened), plus :attr:`photo_hosts`."""
        if face_source is None:
            return PhotoPolicy(parse_hosts(self.extra_photo_hosts()))
        return policy_for_source(
            face_source.source,
            database_url=face_source.database_url,
            supabase_url=face_source.supabase_url,
            embedded_home=face_source.embedded_home,
            extra_hosts=self.extra_photo_hosts(),
        )

    @property
    def photos_root(self) -> Path:
        """The photo cache's folder (facepipeline.photos)."""
        return self.root / "photos"

    def photo_cache(self, policy: PhotoPolicy | None = None) -> PhotoCache:
        """The photo cache, fetching only what ``policy`` allows (default: :attr:`photo_hosts` only,
        no ``file://``): pass ``self.photo_policy(face_source)`` where photos are fetched."""
        return PhotoCache(
            self.photos_root,
            timeout_s=self.fetch_timeout_s,
            retries=self.fetch_retries,
            concurrency=self.fetch_concurrency,
            policy=policy if policy is not None else self.photo_policy(),
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

    def writeback_ledger(self, gallery: str) -> WriteBackLedger:
        """Which rows of the gallery at ``gallery`` (its address) hold what the last write-back left
        there (facepipeline.gallery.ledger); a cache: removing it costs one full comparison."""
        return WriteBackLedger(self.root / "cache", gallery)

    def config_store(self, source: str, gallery=None) -> ConfigStore:
        return ConfigStore(self.root / "config", source, gallery)
