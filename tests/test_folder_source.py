import shutil

import pytest

from facepipeline.errors import SourceError
from facepipeline.sources import FolderSource, open_source
from tests.conftest import GROUP_PHOTOS


def test_person_folders_become_verified_faces_with_stable_ids(small_faces):
    faces = open_source(f"folder:{small_faces}").verified_faces()
    assert len(faces) == 48 and len({f.person_id for f in faces}) == 6
    assert all(f.bbox is None and f.photo_ref.startswith("file://") for f in faces)
    again = FolderSource(small_faces).verified_faces()
    assert [f.face_id for f in again] == [f.face_id for f in faces]


def test_non_photos_and_hidden_files_are_ignored(small_faces):
    person = next(p for p in small_faces.iterdir() if p.is_dir())
    (person / "notes.txt").write_text("hello")
    (person / ".DS_Store").write_bytes(b"\0")
    (small_faces / "MANIFEST.csv").write_text("path\n")
    assert len(FolderSource(small_faces).verified_faces()) == 48


def test_face_boxes_csv_gives_one_verified_face_per_named_box(tmp_path):
    shutil.copy(GROUP_PHOTOS / "insightface_t1.jpg", tmp_path / "t1.jpg")
    (tmp_path / "face_boxes.csv").write_text(
        "\ufeffpath,x,y,w,h,identity\n"  # a spreadsheet's byte-order mark
        "t1.jpg,55,258,118,130,Jennifer_Aniston\n"
        "t1.jpg,729,356,114,114,Matthew_Perry\n"
        "t1.jpg,729,356,114,114,Matthew_Perry\n"  # the same line twice is one face
        "t1.jpg,262,132,110,128,\n",
        encoding="utf-8",
    )
    faces = FolderSource(tmp_path).verified_faces()
    assert [f.person_name for f in faces] == ["Jennifer_Aniston", "Matthew_Perry"]
    assert faces[0].bbox.width == 118 and faces[0].photo_ref == faces[1].photo_ref


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("path,x,y,w,h,identity\nt1.jpg,1,2,-3,4,A\n", "line 2: bad box"),
        ("path,x,y,w,h,identity\nt1.jpg,one,2,3,4,A\n", "line 2: bad box"),
        ("path,x,y,w,h,identity\n../../etc/passwd,1,2,3,4,A\n", "leaves the folder"),
        ("path,x,y,identity\nt1.jpg,1,2,A\n", "needs the columns"),
        ("path,x,y,w,h,identity\nt1.jpg,1,2,3,4,A\nt1.jpg,1,2,3,4,B\n", "line 3: this box of t1.jpg is already labelled 'A'"),
    ],
)
def test_bad_face_boxes_csv_is_refused_with_its_line(tmp_path, rows, message):
    (tmp_path / "face_boxes.csv").write_text(rows)
    with pytest.raises(SourceError, match=message):
        FolderSource(tmp_path).verified_faces()


def test_missing_or_empty_folder_and_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="directory not found"):
        open_source(f"folder:{tmp_path / 'nope'}").verified_faces()
    with pytest.raises(SourceError, match="no photos"):
        open_source(f"folder:{tmp_path}").verified_faces()
    with pytest.raises(SourceError, match="unknown source 'ftp:somewhere'"):
        open_source("ftp:somewhere")
    with pytest.raises(SourceError, match="unknown source 'just-a-path': use embedded"):
        open_source("just-a-path")
