"""``facepipeline search PHOTO``: the faces of the promoted index most like the faces on a photo."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.main import UsageError, print_json
from cli.sources import event_id_arg
from facepipeline.index import IndexStore
from facepipeline.model import FaceModel
from facepipeline.search import search_photo
from facepipeline.settings import Settings


def run(args: argparse.Namespace) -> int:
    photo = Path(args.photo)
    if not photo.is_file():
        raise UsageError(f"no such photo: {photo}")
    if args.k < 1:
        raise UsageError(f"-k must be at least 1, got {args.k}")
    event = event_id_arg(args.event) if args.event else None
    settings = Settings.from_env()
    version = IndexStore(settings.home / "index").require_promoted()
    model = FaceModel.load(settings.model_root, settings.model_pack, providers=settings.providers)
    faces = search_photo(model, photo.read_bytes(), version, k=args.k, event_id=event)
    if args.json:
        print_json({"photo": str(photo), "index_version": version.name, "event_id": event, "faces": [f.as_dict() for f in faces]})
        return 0
    if not faces:
        print(f"no face found on {photo}")
    for number, face in enumerate(faces, 1):
        box = ", ".join(f"{v:.0f}" for v in face.bbox.to_json().values())
        print(f"face {number} at ({box}), detector score {face.det_score:.2f}; best matches in {version.name}:")
        for match in face.matches:
            print(f"  {match.similarity:.3f}  {match.person_name or match.person_id}  {match.photo or match.face_id}")
    return 0
