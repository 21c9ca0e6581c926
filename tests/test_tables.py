"""The table store: atomic Parquet files, and decoded tables reused only while their file is unchanged."""

import gc
import os
import subprocess
import sys
import weakref

import pyarrow as pa
import pyarrow.parquet as pq

from facepipeline.tables import TableStore, _RecentTables


def _table(values: list[int]) -> pa.Table:
    return pa.table({"face_id": [f"f{v}" for v in values], "value": values})


def test_a_table_read_twice_is_decoded_once(tmp_path):
    store = TableStore(tmp_path)
    store.write("faces", _table([1, 2, 3]))
    first = store.read("faces")
    assert store.read("faces") is first
    assert first.equals(_table([1, 2, 3]))


def test_a_table_written_is_handed_back_as_written_and_equals_its_file(tmp_path):
    """The next step of a run does not decode the file the step before just wrote."""
    store = TableStore(tmp_path)
    table = pa.table({"face_id": ["a", "b"], "embedding": pa.array([[0.5, 0.25], [1.0, 2.0]], pa.list_(pa.float32(), 2))})
    table = table.replace_schema_metadata({b"facepipeline.kind": b"test"})
    store.write("faces", table)
    kept = store.read("faces")
    assert store.read("faces") is kept
    assert kept.column("embedding").chunk(0).values.buffers()[1].address == table.column("embedding").chunk(0).values.buffers()[1].address
    read = pq.read_table(store.path("faces"))
    assert kept.equals(read, check_metadata=True) and kept.schema.equals(read.schema, check_metadata=True)
    assert kept.schema.metadata == {b"facepipeline.kind": b"test"}


def test_a_table_replaced_right_after_it_was_written_is_not_handed_out_simulated_race(tmp_path, monkeypatch):
    """Another process replaces the file between this write's rename and its look at the file."""
    import facepipeline.tables as tables

    store = TableStore(tmp_path)
    real_replace = os.replace

    def replace_then_another_writer(source, target):
        real_replace(source, target)
        pq.write_table(_table([7, 8, 9]), tmp_path / "other.parquet")
        real_replace(tmp_path / "other.parquet", target)

    monkeypatch.setattr(tables.os, "replace", replace_then_another_writer)
    store.write("faces", _table([1, 2, 3]))
    assert store.read("faces").equals(_table([7, 8, 9]))


def test_floating_point_columns_are_not_dictionary_encoded_and_vectors_not_compressed(tmp_path):
    """Embeddings hardly repeat: a dictionary page for them is built, then thrown away; and zstd
    cannot shrink their bytes much."""
    store = TableStore(tmp_path)
    table = pa.table({
        "face_id": ["a", "b", "a"],
        "score": [0.5, 0.25, 0.5],
        "embedding": pa.array([[0.5, 0.25]] * 3, pa.list_(pa.float32(), 2)),
        "people": [["p1", "p2"], ["p1"], []],
    })
    metadata = pq.ParquetFile(store.write("faces", table)).metadata.row_group(0)
    encodings = {metadata.column(i).path_in_schema: metadata.column(i).encodings for i in range(metadata.num_columns)}
    assert "RLE_DICTIONARY" in encodings["face_id"] and "RLE_DICTIONARY" in encodings["people.list.element"]
    assert "RLE_DICTIONARY" not in encodings["score"] and "RLE_DICTIONARY" not in encodings["embedding.list.element"]
    compression = {metadata.column(i).path_in_schema: metadata.column(i).compression for i in range(metadata.num_columns)}
    assert compression == {"face_id": "ZSTD", "score": "ZSTD", "embedding.list.element": "UNCOMPRESSED", "people.list.element": "ZSTD"}
    assert store.read("faces").equals(table)


def test_a_table_with_struct_columns_is_compressed_whole(tmp_path):
    table = pa.table({"face_id": ["a"], "box": [{"x": 1.5, "y": 2.5}], "embedding": pa.array([[0.5, 0.25]], pa.list_(pa.float32(), 2))})
    metadata = pq.ParquetFile(TableStore(tmp_path).write("faces", table)).metadata.row_group(0)
    assert {metadata.column(i).compression for i in range(metadata.num_columns)} == {"ZSTD"}
    assert TableStore(tmp_path).read("faces").equals(table)


def test_a_rewritten_table_is_read_anew(tmp_path):
    store = TableStore(tmp_path)
    store.write("faces", _table([1, 2, 3]))
    store.read("faces")
    store.write("faces", _table([4, 5, 6]))  # the same size on disk, perhaps the same clock tick
    assert store.read("faces").equals(_table([4, 5, 6]))


def test_a_file_another_process_replaced_is_read_anew(tmp_path):
    store = TableStore(tmp_path)
    store.write("faces", _table([1, 2, 3]))
    assert store.read("faces").num_rows == 3
    writer = (
        "import sys, pyarrow as pa; from facepipeline.tables import TableStore; "
        "TableStore(sys.argv[1]).write('faces', pa.table({'face_id': ['x'], 'value': [9]}))"
    )
    subprocess.run([sys.executable, "-c", writer, str(tmp_path)], check=True, cwd=os.getcwd())
    assert store.read("faces").column("value").to_pylist() == [9]


def test_a_file_edited_in_place_is_read_anew(tmp_path):
    """Not the store's own way of writing, but a user's: the size or the modification time changes."""
    store = TableStore(tmp_path)
    store.write("faces", _table([1]))
    assert store.read("faces").num_rows == 1
    pq.write_table(_table(list(range(100))), store.path("faces"))  # truncates and rewrites the same inode
    assert store.read("faces").num_rows == 100


def test_a_missing_table_is_none_and_a_deleted_one_is_not_handed_out(tmp_path):
    store = TableStore(tmp_path)
    assert store.read("faces") is None
    store.write("faces", _table([1]))
    store.read("faces")
    store.path("faces").unlink()
    assert store.read("faces") is None


def test_the_tables_kept_stay_under_the_byte_budget(tmp_path):
    small, large = _table([1, 2]), _table(list(range(10_000)))
    for name, table in (("a", small), ("b", small), ("big", large)):
        pq.write_table(table, tmp_path / f"{name}.parquet")
    recent = _RecentTables(max_bytes=small.nbytes * 2 + small.nbytes // 2)  # room for two small ones
    a = recent.read(tmp_path / "a.parquet")
    assert recent.read(tmp_path / "a.parquet") is a
    big = recent.read(tmp_path / "big.parquet")
    assert recent.read(tmp_path / "big.parquet") is not big  # larger than the budget: never kept
    recent.read(tmp_path / "b.parquet")
    pq.write_table(small, tmp_path / "c.parquet")
    recent.read(tmp_path / "c.parquet")  # a third small table pushes out the least recently used, a
    assert recent.read(tmp_path / "a.parquet") is not a


def test_what_is_not_a_regular_file_reads_as_no_table(tmp_path):
    store = TableStore(tmp_path)
    store.path("folder").mkdir()  # a directory named like a table
    (tmp_path / "file").write_text("not a folder")
    assert store.read("folder") is None
    assert TableStore(tmp_path / "file").read("faces") is None  # a path through a file


def test_a_replaced_or_deleted_file_lets_go_of_its_table(tmp_path):
    recent = _RecentTables(max_bytes=2**20)
    path = tmp_path / "faces.parquet"
    pq.write_table(_table([1, 2, 3]), path)
    first = recent.read(path)
    ref = weakref.ref(first)
    del first
    path.unlink()
    assert recent.read(path) is None
    gc.collect()
    assert ref() is None  # nothing keeps the old table alive once its file is gone
