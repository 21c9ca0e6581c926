"""The embedding stage and its incremental table, on real photos with the real model."""

import io
import sys
import threading
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from facepipeline.embedding import PERMANENT_FAILURES, UNALIGNABLE_FACE, FaceJob, embed_faces
from facepipeline.embedding_store import embedding_matrix, update_embeddings, usable
from facepipeline.geometry import BBox
from facepipeline.images import decode_image
from facepipeline.model import FaceModel
from facepipeline.model.alignment import AlignmentError
from facepipeline.photos import PhotoCache
from facepipeline.sources import FolderSource, open_source
from tests.conftest import FACES, GROUP_PHOTOS, MODEL_ROOT, PACK

T1_BOXES = {  # hand-labelled boxes of the Friends still (data/group_photos/face_boxes.csv)
    "Jennifer_Aniston": BBox(55, 258, 118, 130),
    "Courteney_Cox": BBox(262, 132, 110, 128),
    "David_Schwimmer": BBox(448, 271, 139, 139),
    "Matthew_Perry": BBox(729, 356, 114, 114),
    "Matt_LeBlanc": BBox(877, 74, 110, 110),
    "Lisa_Kudrow": BBox(1114, 277, 118, 118),
}


def _blank_jpeg() -> bytes:
    """A real JPEG with no face at all: a smooth grey gradient."""
    gradient = np.tile(np.linspace(60, 200, 320, dtype=np.uint8), (240, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


BLANK = _blank_jpeg()


def test_each_verified_box_of_a_group_photo_gets_its_own_face(face_model):
    data = (GROUP_PHOTOS / "insightface_t1.jpg").read_bytes()
    jobs = [FaceJob(name, "t1", box) for name, box in T1_BOXES.items()]
    results = {r.face_id: r for r in embed_faces(face_model, jobs, lambda _: data)}
    assert all(r.ok for r in results.values())
    for name, result in results.items():
        assert result.detection.bbox.iou(T1_BOXES[name]) > 0.3, name
    vectors = np.stack([r.embedding for r in results.values()])
    similarity = vectors @ vectors.T
    assert np.max(similarity[~np.eye(6, dtype=bool)]) < 0.4  # six different people


def test_a_few_faces_keep_every_worker_busy_and_embed_as_one_worker_would(face_model):
    """Six faces are fewer than one batch: they are still cut so that both workers take some."""
    photos = {f"p{i}": path.read_bytes() for i, path in enumerate(sorted((FACES / "Tony_Blair").glob("*.jpg"))[:6])}
    jobs = [FaceJob(f"face{i}", sha, None) for i, sha in enumerate(photos)]
    readers: set[str] = set()

    def read(sha: str) -> bytes:
        readers.add(threading.current_thread().name)
        return photos[sha]

    both = {r.face_id: r for r in embed_faces(face_model, jobs, read, workers=2)}
    assert len(readers) == 2, readers
    one = {r.face_id: r for r in embed_faces(face_model, jobs, lambda sha: photos[sha], workers=1)}
    assert all(r.ok for r in both.values()) and both.keys() == one.keys()
    for face_id, result in both.items():
        np.testing.assert_allclose(result.embedding, one[face_id].embedding, atol=1e-6)


def test_a_model_that_cannot_import_onnx_fails_the_stage_not_each_face_simulated_unimportable(monkeypatch):
    """A broken install (here: the onnx package, which reads the graphs, made unimportable, the one
    thing faked) raises before any worker starts; it is not reported as one unexpected error per face."""
    model = FaceModel.load(MODEL_ROOT, PACK)
    monkeypatch.setitem(sys.modules, "onnx", None)
    data = (FACES / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    with pytest.raises(ImportError):
        list(embed_faces(model, [FaceJob("a", "p", None), FaceJob("b", "p", BBox(68, 68, 115, 115))], lambda _: data))
    assert list(embed_faces(model, [], lambda _: data)) == []  # nothing to embed: nothing to import


def test_a_face_that_cannot_be_aligned_fails_alone_and_for_good_simulated_degenerate_landmarks(face_model, monkeypatch):
    """Landmarks no similarity maps onto the template (faked: the first alignment raises, as NaN
    landmarks would) fail that face with a permanent code, its detection kept; the photo's other
    face is embedded."""
    data = next(iter(sorted(GROUP_PHOTOS.glob("*.jpg")))).read_bytes()
    [first, second, *_] = face_model.detect(decode_image(data))
    real_align, calls = face_model.align, []

    def align(image, detection):
        calls.append(detection)
        if len(calls) == 1:
            raise AlignmentError("the landmarks are not all finite")
        return real_align(image, detection)

    monkeypatch.setattr(face_model, "align", align)
    jobs = [FaceJob("a", "p", first.bbox), FaceJob("b", "p", second.bbox)]
    results = {r.face_id: r for r in embed_faces(face_model, jobs, lambda _: data, workers=1)}
    assert len(calls) == 2
    assert results["a"].error_code == UNALIGNABLE_FACE and results["a"].detection is not None
    assert "cannot be aligned" in results["a"].error and results["a"].embedding is None
    assert results["b"].ok
    assert UNALIGNABLE_FACE in PERMANENT_FAILURES


def test_matches_whole_photo_detection_without_a_tight_crop(face_model):
    """Detection around the box and on the whole photo find the same face, same embedding."""
    data = (FACES / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()
    [boxed] = embed_faces(face_model, [FaceJob("a", "p", BBox(68, 68, 115, 115))], lambda _: data)
    [central] = embed_faces(face_model, [FaceJob("b", "p", None)], lambda _: data)
    assert boxed.ok and central.ok
    assert float(boxed.embedding @ central.embedding) > 0.95


def test_failures_carry_their_reason_and_do_not_stop_the_rest(face_model):
    good = (FACES / "Tony_Blair" / "Tony_Blair_0002.jpg").read_bytes()
    photos = {"good": good, "truncated": good[:2000], "html": b"<html></html>", "blank": BLANK}
    jobs = [
        FaceJob("ok", "good", BBox(68, 68, 115, 115)),
        FaceJob("outside", "good", BBox(400, 400, 50, 50)),
        FaceJob("empty-corner", "good", BBox(0, 0, 30, 30)),
        FaceJob("truncated", "truncated", None),
        FaceJob("html", "html", None),
        FaceJob("blank", "blank", None),
    ]
    results = {r.face_id: r for r in embed_faces(face_model, jobs, photos.__getitem__)}
    assert results["ok"].ok
    assert results["outside"].error == "box {'x': 400, 'y': 400, 'width': 50, 'height': 50} lies outside the 250x250 photo"
    assert results["empty-corner"].error == "no face found in the verified box"
    assert results["truncated"].error.startswith("photo unreadable: corrupt image")
    assert results["html"].error.startswith("photo unreadable: not an image")
    assert results["blank"].error == "no face found on the photo"


def build(face_model, tmp_path, faces, previous=None, mode="incremental"):
    with PhotoCache(tmp_path / "cache") as cache:
        records = {r.ref: r for r in cache.fetch_all(f.photo_ref for f in faces)}
        return update_embeddings(face_model, faces, records, cache.read, previous, mode=mode)


def test_second_run_reuses_everything_and_relabels_without_re_embedding(face_model, tmp_path, small_faces):
    faces = open_source(f"folder:{small_faces}").verified_faces()[:20]
    first, report = build(face_model, tmp_path, faces)
    assert (report.embedded, report.reused, report.failed) == (20, 0, 0)
    assert first.schema.field("embedding").type == pa.list_(pa.float32(), 512)
    vectors = embedding_matrix(usable(first))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    renamed = [replace(f, person_name="Renamed") if i < 3 else f for i, f in enumerate(faces)]
    second, report = build(face_model, tmp_path, renamed, previous=first)
    assert (report.embedded, report.reused) == (0, 20)
    assert second.column("person_name").to_pylist()[:3] == ["Renamed"] * 3
    assert np.array_equal(embedding_matrix(usable(second)), vectors)

    forced, report = build(face_model, tmp_path, faces, previous=second, mode="full")
    assert (report.embedded, report.reused) == (20, 0)


def test_only_faces_whose_box_or_photo_changed_are_embedded_again(face_model, tmp_path, small_faces):
    faces = FolderSource(small_faces).verified_faces()[:10]
    first, _ = build(face_model, tmp_path, faces)
    moved = [replace(faces[0], bbox=BBox(60, 60, 130, 130))] + faces[1:]
    photo = small_faces / faces[1].photo_ref.split(str(small_faces))[1].lstrip("/")
    photo.write_bytes((FACES / "Tony_Blair" / "Tony_Blair_0003.jpg").read_bytes())  # new bytes, same path
    added = FolderSource(small_faces).verified_faces()[10:12]
    with PhotoCache(tmp_path / "cache2") as cache:  # a fresh cache sees the new bytes of faces[1]
        records = {r.ref: r for r in cache.fetch_all(f.photo_ref for f in moved + added)}
        table, report = update_embeddings(face_model, moved + added, records, cache.read, first)
    assert (report.embedded, report.reused) == (4, 8)
    assert table.column("face_id").to_pylist() == [f.face_id for f in moved + added]


def test_failed_faces_are_kept_with_reasons_and_not_retried_until_something_changes(face_model, tmp_path, small_faces):
    person = next(p for p in sorted(small_faces.iterdir()) if p.is_dir())
    (person / "zero.jpg").write_bytes(b"")
    (person / "truncated.jpg").write_bytes((FACES / "Tony_Blair" / "Tony_Blair_0001.jpg").read_bytes()[:2500])
    (person / "blank.jpg").write_bytes(BLANK)
    faces = FolderSource(small_faces).verified_faces()
    table, report = build(face_model, tmp_path, faces)
    assert (report.faces_total, report.failed, report.embedded) == (51, 3, 48)
    errors = dict(zip(table.column("face_id").to_pylist(), table.column("error").to_pylist(), strict=True))
    by_name = {f.photo_ref.rsplit("/", 1)[1]: errors[f.face_id] for f in faces}
    assert by_name["zero.jpg"] == "photo unavailable: empty file (0 bytes)"
    assert by_name["truncated.jpg"].startswith("photo unreadable: corrupt image")
    assert by_name["blank.jpg"] == "no face found on the photo"
    assert usable(table).num_rows == 48

    _, again = build(face_model, tmp_path, faces, previous=table)
    assert (again.embedded, again.reused, again.failed_before, again.failed) == (0, 48, 2, 3)


def test_a_photo_moved_to_another_person_is_relabelled_not_embedded_again(face_model, tmp_path, small_faces):
    first_faces = FolderSource(small_faces).verified_faces()
    first, _ = build(face_model, tmp_path, first_faces)
    people = sorted(p for p in small_faces.iterdir() if p.is_dir())
    moved = next(people[0].iterdir())
    moved.rename(people[1] / moved.name)  # someone fixes a wrong label by moving the photo
    faces = FolderSource(small_faces).verified_faces()
    table, report = build(face_model, tmp_path, faces, previous=first)
    assert (report.embedded, report.reused) == (0, 48)
    row = next(r for r in table.to_pylist() if r["photo_ref"].endswith(f"{people[1].name}/{moved.name}"))
    assert row["person_name"] == people[1].name and row["status"] == "ok"


def test_a_local_photo_edited_in_place_is_read_and_embedded_again(face_model, tmp_path, small_faces):
    faces = FolderSource(small_faces).verified_faces()[:4]
    first, _ = build(face_model, tmp_path, faces)
    edited = small_faces / faces[0].photo_ref.split(str(small_faces))[1].lstrip("/")
    edited.write_bytes((FACES / "Tony_Blair" / "Tony_Blair_0005.jpg").read_bytes())
    table, report = build(face_model, tmp_path, faces, previous=first)  # the same cache as before
    assert (report.embedded, report.reused) == (1, 3)
    assert table.column("photo_sha256")[0].as_py() != first.column("photo_sha256")[0].as_py()


def test_a_degenerate_photo_fails_alone(face_model):
    strip = io.BytesIO()
    Image.new("RGB", (2000, 1), "white").save(strip, "JPEG")
    good = (FACES / "Tony_Blair" / "Tony_Blair_0002.jpg").read_bytes()
    photos = {"strip": strip.getvalue(), "good": good}
    results = {r.face_id: r for r in embed_faces(face_model, [FaceJob("s", "strip", None), FaceJob("g", "good", None)], photos.__getitem__)}
    assert results["g"].ok
    assert results["s"].error_code == "photo_unreadable" and "too small: 2000x1" in results["s"].error


def test_changing_a_detection_setting_redoes_the_faces(face_model, tmp_path, small_faces):
    from facepipeline.model import FaceModel
    from tests.conftest import MODEL_ROOT, PACK

    faces = FolderSource(small_faces).verified_faces()[:3]
    first, _ = build(face_model, tmp_path, faces)
    stricter = FaceModel.load(MODEL_ROOT, PACK, det_thresh=0.6)
    _, report = build(stricter, tmp_path, faces, previous=first)
    assert (report.embedded, report.reused) == (3, 0)


def test_a_passing_disk_error_is_retried_but_a_face_that_is_not_there_is_not(face_model, tmp_path, small_faces):
    person = next(p for p in sorted(small_faces.iterdir()) if p.is_dir())
    (person / "blank.jpg").write_bytes(BLANK)
    faces = [f for f in FolderSource(small_faces).verified_faces() if f.photo_ref.startswith(person.as_uri())][:3]
    faces += [f for f in FolderSource(small_faces).verified_faces() if f.photo_ref.endswith("blank.jpg")]
    with PhotoCache(tmp_path / "cache") as cache:
        records = {r.ref: r for r in cache.fetch_all(f.photo_ref for f in faces)}
        flaky_sha = records[faces[0].photo_ref].sha256

        def read_with_one_disk_error(sha: str) -> bytes:
            if sha == flaky_sha:
                raise OSError(24, "Too many open files")
            return cache.read(sha)

        first, report = update_embeddings(face_model, faces, records, read_with_one_disk_error, None)
        codes = dict(zip(first.column("face_id").to_pylist(), first.column("error_code").to_pylist(), strict=True))
        assert codes[faces[0].face_id] == "cache_read_error" and codes[faces[-1].face_id] == "no_face_on_photo"
        second, report = update_embeddings(face_model, faces, records, cache.read, first)
    assert (report.embedded, report.reused, report.failed_before, report.failed) == (1, 2, 1, 1)


def test_an_earlier_table_from_a_model_with_another_dimension_is_set_aside(face_model, tmp_path, small_faces):
    from facepipeline.embedding_store import embeddings_schema

    faces = FolderSource(small_faces).verified_faces()[:2]
    first, _ = build(face_model, tmp_path, faces)
    row = {**first.slice(0, 1).to_pylist()[0], "embedding": [0.0625] * 256}  # the same face and key, a 256-d vector
    for other_model in (pa.Table.from_pylist([], schema=embeddings_schema(256)), pa.Table.from_pylist([row], schema=embeddings_schema(256))):
        _, report = build(face_model, tmp_path, faces, previous=other_model)
        assert (report.embedded, report.reused) == (2, 0)
    empty, report = build(face_model, tmp_path, [])
    assert empty.num_rows == 0 and report.faces_total == 0


def test_the_faces_to_embed_are_decided_from_the_key_columns_alone_as_the_stage_decides(face_model, tmp_path, small_faces, monkeypatch):
    """split_by_event reads only the published table's key columns; what it plans is what
    update_embeddings then embeds (a box moved, faces added, a permanent failure kept)."""
    import pyarrow.parquet as pq

    import facepipeline.embedding_store as store
    from facepipeline.embedding_store import KEY_COLUMNS, embeddings_schema, faces_to_embed, read_keys

    person = next(p for p in sorted(small_faces.iterdir()) if p.is_dir())
    (person / "blank.jpg").write_bytes(BLANK)
    everyone = FolderSource(small_faces).verified_faces()
    blank = next(f for f in everyone if f.photo_ref.endswith("blank.jpg"))
    first_faces = [f for f in everyone if f is not blank][:8] + [blank]
    first, _ = build(face_model, tmp_path, first_faces)
    published = tmp_path / "face_embeddings.parquet"
    pq.write_table(first, published)

    faces = [replace(first_faces[0], bbox=BBox(60, 60, 130, 130)), *first_faces[1:], *[f for f in everyone if f not in first_faces][:2]]
    keys = read_keys(published, embeddings_schema(512))
    assert keys.column_names == list(KEY_COLUMNS) and keys.num_rows == 9
    with PhotoCache(tmp_path / "cache") as cache:
        records = {r.ref: r for r in cache.fetch_all(f.photo_ref for f in faces)}
        planned = faces_to_embed(face_model, faces, records, keys)
        embedded: list[str] = []
        real_embed_faces = store.embed_faces

        def spied(model, jobs, *args, **kwargs):  # the real call, its jobs noted
            jobs = list(jobs)
            embedded.extend(job.face_id for job in jobs)
            return real_embed_faces(model, jobs, *args, **kwargs)

        monkeypatch.setattr(store, "embed_faces", spied)
        _, report = update_embeddings(face_model, faces, records, cache.read, pq.read_table(published))
    assert sorted(planned) == sorted(embedded) == sorted([faces[0].face_id, *(f.face_id for f in faces[-2:])])
    assert (report.embedded, report.reused, report.failed_before) == (3, 7, 1)
    assert read_keys(tmp_path / "none.parquet") is None
    pq.write_table(pa.Table.from_pylist([], schema=embeddings_schema(256)), tmp_path / "other.parquet")
    assert read_keys(tmp_path / "other.parquet", embeddings_schema(512)) is None  # another model's layout: not reused
    assert read_keys(tmp_path / "other.parquet").num_rows == 0


def test_the_journal_keeps_each_batch_and_a_rerun_embeds_only_the_faces_it_lacks(face_model, tmp_path, small_faces):
    """A run that made 6 rows and no table (as if killed), then a run over all 10 faces: it embeds
    the 4 the journal lacks and reuses the 6 bit for bit; the published table's keys prune it all."""
    import pyarrow.parquet as pq

    from facepipeline.embedding import stage_fingerprint
    from facepipeline.embedding_journal import EmbeddingJournal
    from facepipeline.embedding_store import reusable_keys

    faces = FolderSource(small_faces).verified_faces()[:10]
    journal = EmbeddingJournal(tmp_path / "journal", stage_fingerprint(face_model), flush_rows=4)
    with PhotoCache(tmp_path / "cache") as cache:
        records = {r.ref: r for r in cache.fetch_all(f.photo_ref for f in faces)}
        _, killed = update_embeddings(face_model, faces[:6], records, cache.read, None, journal=journal)
        assert [pq.ParquetFile(p).metadata.num_rows for p in journal.parts()] == [4, 2]  # a batch at a time
        (journal.root / ".part-stray.parquet.tmp").write_bytes(b"half a part")  # what a kill mid-write leaves
        table, report = update_embeddings(face_model, faces, records, cache.read, None, journal=journal)
        uninterrupted, _ = update_embeddings(face_model, faces, records, cache.read, None)
    assert (killed.embedded, report.embedded, report.resumed, report.reused, report.failed) == (6, 4, 6, 0, 0)
    assert journal.rows() == 10  # the rerun journalled its own 4 rows
    assert table.column("face_id").to_pylist() == uninterrupted.column("face_id").to_pylist()
    assert np.array_equal(embedding_matrix(table), embedding_matrix(uninterrupted))  # bit-identical

    assert journal.prune(reusable_keys(table.slice(0, 3))) == 3
    assert journal.rows() == 7
    other_stage = EmbeddingJournal(journal.root, "f" * 64)
    other_stage.append(table.slice(0, 1))
    assert journal.prune(set(), compact=True) == 0
    assert [pq.ParquetFile(p).metadata.num_rows for p in journal.parts()] == [7]  # merged into one part
    assert sorted(p.name.split("-")[1] for p in journal.root.iterdir()) == [journal.stage]  # strays and other stages gone
    assert journal.prune(reusable_keys(table), compact=True) == 7 and journal.parts() == []
