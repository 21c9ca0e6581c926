"""The photo cache against a real HTTP server on 127.0.0.1 and real files."""

from facepipeline.photos import PhotoCache, summarize
from tests.conftest import FACES, Route

JPEG = (FACES / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()
OTHER_JPEG = (FACES / "Colin_Powell" / "Colin_Powell_0002.jpg").read_bytes()


def test_photos_are_fetched_once_ever_and_failures_are_counted_not_fatal(tmp_path, photo_server):
    good = photo_server.add("a.jpg", JPEG)
    also_good = photo_server.add("b.jpg", OTHER_JPEG)
    html = photo_server.add("page.jpg", b"<html><body>login</body></html>", content_type="text/html")
    empty = photo_server.add("empty.jpg", b"")
    missing = photo_server.url("missing.jpg")
    refs = [good, also_good, html, empty, missing, good]

    with PhotoCache(tmp_path / "cache", retries=0) as cache:
        records = cache.fetch_all(refs)
        summary = summarize(records)
        assert summary.line() == "processed 2/5 photos (3 failed; 2 fetched, 0 from cache)"
        errors = {r.ref: r.error for r in records if not r.ok}
        assert errors == {
            html: "not an image (looks like an HTML page)",
            empty: "empty file (0 bytes)",
            missing: "HTTP 404",
        }
        assert cache.read(records[0].sha256) == JPEG
        assert summary.fetched_bytes == len(JPEG) + len(OTHER_JPEG)

    # A new process, the same cache: nothing good is fetched again, failures are retried.
    photo_server.routes["/missing.jpg"] = Route(body=JPEG)
    with PhotoCache(tmp_path / "cache", retries=0) as cache:
        again = summarize(cache.fetch_all(refs))
    assert again.line() == "processed 3/5 photos (2 failed; 1 fetched, 2 from cache)"
    assert photo_server.hits["/a.jpg"] == 1 and photo_server.hits["/b.jpg"] == 1
    assert photo_server.hits["/missing.jpg"] == 2


def test_a_photo_whose_cached_copy_is_gone_is_fetched_again(tmp_path, photo_server):
    """The manifest says a photo is cached; its file decides. One removed (a disk cleaned by hand)
    is fetched again, the other is not."""
    kept, removed = photo_server.add("a.jpg", JPEG), photo_server.add("b.jpg", OTHER_JPEG)
    with PhotoCache(tmp_path / "cache", retries=0) as cache:
        first = {r.ref: r for r in cache.fetch_all([kept, removed])}
        cache.path_for(first[removed].sha256).unlink()
        again = summarize(cache.fetch_all([kept, removed]))
        assert cache.read(first[removed].sha256) == OTHER_JPEG
    assert again.line() == "processed 2/2 photos (0 failed; 1 fetched, 1 from cache)"
    assert photo_server.hits["/a.jpg"] == 1 and photo_server.hits["/b.jpg"] == 2


def test_malformed_references_fail_alone_and_upper_case_schemes_are_urls(tmp_path, photo_server):
    """An unparsable reference (a broken IPv6 host, ``file://[``) is one failed photo, not the end
    of the fetch; ``HTTP://`` is fetched like ``http://``."""
    good = photo_server.add("a.jpg", JPEG)
    shouting = good.replace("http://", "HTTP://", 1)
    broken = ["http://[::1/a.jpg", "file://[x/a.jpg"]
    with PhotoCache(tmp_path / "cache", retries=0) as cache:
        records = {r.ref: r for r in cache.fetch_all([good, shouting, *broken])}
    assert records[good].ok and records[shouting].ok and records[shouting].sha256 == records[good].sha256
    assert all(not records[ref].ok and records[ref].error for ref in broken), {ref: records[ref].error for ref in broken}


def test_server_errors_are_retried_then_reported(tmp_path, photo_server):
    broken = photo_server.add("broken.jpg", b"oops", status=500, content_type="text/plain")
    with PhotoCache(tmp_path / "cache", retries=2) as cache:
        [record] = cache.fetch_all([broken])
    assert not record.ok and "500" in record.error
    assert photo_server.hits["/broken.jpg"] == 3  # the first try and two retries


def test_timeouts_are_reported_and_the_rest_goes_on(tmp_path, photo_server):
    slow = photo_server.add("slow.jpg", JPEG, delay_s=2.0)
    fast = photo_server.add("fast.jpg", JPEG)
    with PhotoCache(tmp_path / "cache", retries=0, timeout_s=0.3) as cache:
        slow_record, fast_record = cache.fetch_all([slow, fast])
    assert fast_record.ok
    assert not slow_record.ok and "ReadTimeout" in slow_record.error


def test_the_same_bytes_under_two_urls_are_stored_once(tmp_path, photo_server):
    first, second = photo_server.add("x.jpg", JPEG), photo_server.add("renamed/x.jpg", JPEG)
    with PhotoCache(tmp_path / "cache") as cache:
        a, b = cache.fetch_all([first, second])
        objects = [p for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file()]
    assert a.sha256 == b.sha256 and len(objects) == 1


def test_local_files_and_oversized_responses(tmp_path, photo_server):
    big = photo_server.add("big.jpg", JPEG * 4)
    streamed = photo_server.add("streamed.jpg", JPEG * 4, send_length=False)  # no Content-Length: capped while reading
    with PhotoCache(tmp_path / "cache", max_bytes=len(JPEG) * 2) as cache:
        local, missing, too_big, too_long = cache.fetch_all(
            [(FACES / "Colin_Powell" / "Colin_Powell_0001.jpg").as_uri(), (tmp_path / "nope.jpg").as_uri(), big, streamed]
        )
    assert local.ok and local.size == len(JPEG)
    assert not missing.ok and "No such file" in missing.error
    assert not too_big.ok and too_big.error == f"response too large: {len(JPEG) * 4:,} bytes (limit {len(JPEG) * 2:,})"
    assert not too_long.ok and too_long.error == f"response too large: over {len(JPEG) * 2:,} bytes"


def test_malformed_headers_fail_alone_and_urls_are_logged_without_their_tokens(tmp_path, photo_server):
    from facepipeline.photos import redact_ref

    short = photo_server.add("short.jpg", JPEG[:200])
    ppm = photo_server.add("bad.ppm", b"P6\nabc def\n255\n")
    good = photo_server.add("good.jpg", JPEG)
    with PhotoCache(tmp_path / "cache", retries=0) as cache:
        records = cache.fetch_all([short, ppm, good])
    assert [r.ok for r in records] == [False, False, True]
    assert records[0].error.startswith("corrupt image")
    # Pillow's PPM decoder is never reached: only JPEG, PNG and WEBP are opened.
    assert records[1].error == "not an image (a PNM image; accepted formats: JPEG, PNG, WEBP)"
    signed = "https://user:secret@gallery.example/photos/a.jpg?token=abc123&expires=1"
    assert redact_ref(signed) == "https://gallery.example/photos/a.jpg"


def test_a_file_edited_while_it_is_cached_is_read_again_next_time(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    with PhotoCache(tmp_path / "cache") as cache:
        def edit_during_the_run(done, total, failed):
            photo.write_bytes(OTHER_JPEG)  # the gallery replaces the photo after it was read

        [first] = cache.fetch_all([photo.as_uri()], progress=edit_during_the_run)
        [second] = cache.fetch_all([photo.as_uri()])
    assert first.sha256 != second.sha256 and second.fetched
    assert cache.read(second.sha256) == OTHER_JPEG


def test_a_cache_made_before_local_files_were_rechecked_is_migrated(tmp_path):
    import sqlite3

    (tmp_path / "cache").mkdir()
    with sqlite3.connect(tmp_path / "cache" / "manifest.sqlite3") as db:
        db.execute(
            "create table photos (reference text primary key, sha256 text, size integer,"
            " status text not null, error text, fetched_at real not null)"
        )
    photo = (FACES / "Colin_Powell" / "Colin_Powell_0001.jpg").as_uri()
    with PhotoCache(tmp_path / "cache") as cache:
        assert cache.fetch_all([photo])[0].fetched
        assert not cache.fetch_all([photo])[0].fetched
