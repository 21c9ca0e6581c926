"""The embedded demo gallery: a persistent PostgreSQL + pgvector with the SPEC schema, seeded from a
photo folder whose photos are served over HTTP on 127.0.0.1, all under ``FACEPIPELINE_HOME/gallery``.

``EmbeddedGallery(home, folder).up()`` is idempotent: the first call starts both servers, creates
the schema and seeds it (people = folders, a few synthetic events, a share of faces left
unverified); later calls find them running and return the same addresses. ``down()`` stops both;
the data stays for the next ``up()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facepipeline.errors import SourceError
from facepipeline.gallery import photo_server
from facepipeline.gallery.embedded_postgres import EmbeddedPostgres
from facepipeline.gallery.schema import create_schema
from facepipeline.gallery.seed import SeedReport, seed_from_folder
from facepipeline.settings import DEFAULT_HOME, DEFAULT_SEED_FOLDER


@dataclass(frozen=True)
class RunningGallery:
    dsn: str
    photos_url: str
    seeded: SeedReport | None
    """What was seeded by this call; None when the gallery was already there."""


class EmbeddedGallery:
    def __init__(self, home: str | Path | None = None, seed_folder: str | Path | None = None) -> None:
        self.root = Path(home or Path(DEFAULT_HOME) / "gallery").expanduser().resolve()
        self.seed_folder = Path(seed_folder or DEFAULT_SEED_FOLDER).expanduser().resolve()
        self.postgres = EmbeddedPostgres(self.root / "pgdata")

    def up(self) -> RunningGallery:
        if not self.seed_folder.is_dir():
            raise SourceError(f"embedded gallery: the photo folder to seed from is missing: {self.seed_folder}")
        self.root.mkdir(parents=True, exist_ok=True)
        server = self.postgres.start()
        photos_url = photo_server.start_daemon(self.seed_folder, self.root)
        dsn = server.dsn()
        create_schema(dsn)
        # On every start: a seed that failed half-way (one transaction) is simply done again.
        report = seed_from_folder(
            dsn, self.seed_folder, lambda relative: photo_server.url_for(photos_url, relative), if_empty=True
        )
        return RunningGallery(dsn, photos_url, None if report.skipped else report)

    def down(self) -> None:
        photo_server.stop_daemon(self.root)
        self.postgres.stop()
