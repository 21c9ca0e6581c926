"""The photo fault matrix: each fault injected for real by the HTTP server on 127.0.0.1, counts exact.

A failed photo is counted with its reason and never stops the others; it is fetched again on the
next run (and then only it); what was fetched whole is never fetched again.
"""

import io
import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from facepipeline.photo_policy import HostRule, PhotoPolicy
from facepipeline.photos import PhotoCache, summarize
from tests.conftest import FACES, REPO, Route

JPEG = (FACES / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()
RETRIES = 2


def bomb_png(side: int = 20_000) -> bytes:
    """A 20,000 x 20,000 PNG: some 50 KB on the wire, 400 megapixels once decoded."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG")
    return out.getvalue()


def allowing(photo_server) -> PhotoPolicy:
    return PhotoPolicy((HostRule("127.0.0.1", photo_server.port),))


# (route, reason, requests this run with RETRIES retries)
FAULTS = {
    "404": (Route(status=404, body=b"no", content_type="text/plain"), "HTTP 404", 1),
    "500": (Route(status=500, body=b"oops", content_type="text/plain"), "HTTP 500", 1 + RETRIES),
    "timeout": (Route(body=JPEG, delay_s=1.5), "request failed: ReadTimeoutError (the server did not answer in time)", 1 + RETRIES),
    "reset": (Route(body=JPEG, reset_after=2000), "download interrupted: ProtocolError (connection broken mid-response)", 1 + RETRIES),
    "cut_with_length": (Route(body=JPEG, cut_after=len(JPEG) // 2),
                        "download interrupted: ProtocolError (connection broken mid-response)", 1 + RETRIES),
    "cut_without_length": (Route(body=JPEG, cut_after=len(JPEG) // 2, send_length=False),
                           "corrupt image: image file is truncated", 1 + RETRIES),
    "zero": (Route(body=b""), "empty file (0 bytes)", 1),
    "html": (Route(body=b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html"),
             "not an image (looks like an HTML page)", 1),
    "gif": (Route(body=b"GIF89a" + bytes(100), content_type="image/gif"),
            "not an image (a GIF image; accepted formats: JPEG, PNG, WEBP)", 1),
    "drip": (Route(body=JPEG, drip=(500, 0.2)), "too slow: the photo did not arrive within 1s", 1),
    "bomb": (Route(body=bomb_png(), content_type="image/png"), "image too large", 1),
}


def test_each_photo_fault_fails_alone_with_its_reason_and_only_the_failed_are_fetched_again(tmp_path, photo_server):
    good = photo_server.add("good.jpg", JPEG)
    urls = {}
    for name, (route, _, _) in FAULTS.items():
        photo_server.routes[f"/{name}.jpg"] = route
        urls[name] = photo_server.url(f"{name}.jpg")

    with PhotoCache(tmp_path / "cache", retries=RETRIES, timeout_s=0.5, deadline_s=1.0, policy=allowing(photo_server)) as cache:
        records = cache.fetch_all([good, *urls.values()])
    summary = summarize(records)
    assert (summary.ok, summary.failed, summary.attempts, summary.refused) == (1, len(FAULTS), 1 + len(FAULTS), 0)
    errors = {name: record.error for name, record in zip(urls, records[1:], strict=True)}
    for name, (_, reason, _) in FAULTS.items():
        assert errors[name].startswith(reason), (name, errors[name])
    hits = {name: photo_server.hits.get(f"/{name}.jpg", 0) for name in FAULTS}
    assert hits == {name: requests for name, (_, _, requests) in FAULTS.items()}
    assert [p.name for p in (tmp_path / "cache" / "objects").rglob("*") if p.is_file()] == [records[0].sha256]

    # The server is fixed; a new run (a new process, the same cache) fetches the failed photos only.
    for name in FAULTS:
        photo_server.routes[f"/{name}.jpg"] = Route(body=JPEG)
    with PhotoCache(tmp_path / "cache", retries=RETRIES, timeout_s=0.5, deadline_s=1.0, policy=allowing(photo_server)) as cache:
        again = cache.fetch_all([good, *urls.values()])
        assert all(cache.read(r.sha256) == JPEG for r in again)
    assert summarize(again).line() == f"processed {1 + len(FAULTS)}/{1 + len(FAULTS)} photos (0 failed; {len(FAULTS)} fetched, 1 from cache)"
    assert photo_server.hits["/good.jpg"] == 1
    assert {name: photo_server.hits[f"/{name}.jpg"] - hits[name] for name in FAULTS} == dict.fromkeys(FAULTS, 1)


def test_a_decompression_bomb_is_refused_from_its_header_with_bounded_memory(tmp_path, photo_server):
    """In a process of its own, the peak RSS (Linux's VmHWM, reset through /proc/self/clear_refs)
    while fetching the 400-megapixel PNG stays far below what decoding it would take (400 MB as
    8-bit grey); the same measure does see a 40 MB image allocated afterwards (it can fail)."""
    url = photo_server.add("bomb.png", bomb_png(), content_type="image/png")
    script = textwrap.dedent(
        f"""
        import json, re
        from PIL import Image
        from facepipeline.photo_policy import PhotoPolicy, HostRule
        from facepipeline.photos import PhotoCache

        def kb(key):
            return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

        def peak_growth(work):
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # the peak RSS starts again from the current RSS
            before = kb("VmRSS")
            result = work()
            return result, kb("VmHWM") - before

        with PhotoCache({str(tmp_path / "cache")!r}, retries=0, policy=PhotoPolicy((HostRule("127.0.0.1", {photo_server.port}),))) as cache:
            cache.fetch_all([])  # pools and threads ready before the measure
            [record], bomb_kb = peak_growth(lambda: cache.fetch_all([{url!r}]))
        control, control_kb = peak_growth(lambda: Image.new("L", (20_000, 2_000), 1))  # 40 MB of pixels
        print(json.dumps({{"error": record.error, "bomb_kb": bomb_kb, "control_kb": control_kb}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout)
    assert measured["error"].startswith("image too large")
    assert measured["bomb_kb"] < 20_000, measured  # < 20 MB; decoding would need 400,000 KB
    assert measured["control_kb"] > 35_000, measured
    assert photo_server.hits["/bomb.png"] == 1  # refused, not retried


@pytest.mark.parametrize("retries", [0, 1])
def test_a_truncated_body_is_never_cached_as_ok(tmp_path, photo_server, retries):
    """The known bug: cut short without a Content-Length, the header still parses; it was cached
    "ok", failed as unreadable in the embed step on every run and was never fetched again."""
    url = photo_server.add("cut.jpg", JPEG, cut_after=len(JPEG) - 100, send_length=False)
    with PhotoCache(tmp_path / "cache", retries=retries, policy=allowing(photo_server)) as cache:
        [record] = cache.fetch_all([url])
        assert not record.ok and record.error.startswith("corrupt image: image file is truncated")
        photo_server.routes["/cut.jpg"] = Route(body=JPEG, send_length=False)
        [fixed] = cache.fetch_all([url])
    assert fixed.ok and fixed.size == len(JPEG)
    assert photo_server.hits["/cut.jpg"] == retries + 2


# -- end to end: a gallery whose photos misbehave, retrained through Dagster twice ------------------

GALLERY_FAULTS = {
    # fault: (route while broken, given the photo's bytes; reason in cached_photos; requests in the first run, 2 retries)
    "404": (lambda _: Route(status=404, body=b"no", content_type="text/plain"), "HTTP 404", 1),
    "500": (lambda _: Route(status=500, body=b"oops", content_type="text/plain"), "HTTP 500", 3),
    "reset": (lambda data: Route(body=data, reset_after=2000), "download interrupted: ProtocolError (connection broken mid-response)", 3),
    "truncated": (lambda data: Route(body=data, cut_after=3000, send_length=False), "corrupt image: image file is truncated", 3),
    "html": (lambda _: Route(body=b"<html><body>Sign in</body></html>", content_type="text/html"),
             "not an image (looks like an HTML page)", 1),
    "zero": (lambda _: Route(body=b""), "empty file (0 bytes)", 1),
    "bomb": (lambda _: Route(body=bomb_png(), content_type="image/png"), "image too large", 1),
    "redirect": (lambda _: Route(status=302, location="http://169.254.169.254/latest/meta-data/"),
                 "refused: redirect to 169.254.169.254:80 is not an allowed photo host", 1),
}


def test_a_retrain_over_broken_photos_embeds_the_rest_and_the_next_run_fetches_only_the_failed(
    gallery_dsn, photo_server, tmp_path, monkeypatch
):
    from dataclasses import replace
    from urllib.parse import quote

    import psycopg
    from dagster import DagsterInstance, materialize

    from assets import cached_photos, face_embeddings, verified_faces
    from definitions import build_definitions
    from facepipeline.gallery.seed import seed_from_folder
    from facepipeline.settings import Settings
    from tests.conftest import MODEL_ROOT, PACK, allow_photo_hosts, copy_people, people_with_most_photos

    folder = copy_people(tmp_path / "faces", people_with_most_photos(4, skip=6), 5)  # 20 photos, one face each
    photos = sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/*.jpg"))
    faulty = dict(zip(GALLERY_FAULTS, photos[1::2], strict=False))  # every other photo is broken
    token_url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/?token=SECRET-TOKEN"
    metadata_photo = photos[-1]  # its row points at the cloud metadata service
    for path in photos:
        photo_server.routes["/" + quote(path)] = Route(body=(folder / path).read_bytes())
    for fault, path in faulty.items():
        photo_server.routes["/" + quote(path)] = GALLERY_FAULTS[fault][0]((folder / path).read_bytes())
    seed_from_folder(gallery_dsn, folder, lambda path: photo_server.url(quote(path)), unverified_share=0.0)
    with psycopg.connect(gallery_dsn, autocommit=True) as conn:
        conn.execute("update photos set url = %s where storage_path = %s", [token_url, metadata_photo])

    monkeypatch.setenv("SUPABASE_DB_URL", gallery_dsn)
    allow_photo_hosts(monkeypatch, photo_server.base_url)  # the gallery's photo host, as an operator would list it
    settings = replace(Settings.from_env({}), home=tmp_path / "home", model_root=MODEL_ROOT, model_pack=PACK,
                       source="postgres", providers=("CPUExecutionProvider",))
    (tmp_path / "dagster").mkdir()

    def run():
        result = materialize([verified_faces, cached_photos, face_embeddings], resources=build_definitions(settings).resources,
                             instance=instance, run_config={"resources": {"retrain_options": {"config": {}}}})
        assert result.success

        def metadata(asset: str) -> dict:
            [event] = result.asset_materializations_for_node(asset)
            return {key: value.value for key, value in event.metadata.items()}

        return metadata("cached_photos"), metadata("face_embeddings"), result.output_for_node("cached_photos")

    broken = len(GALLERY_FAULTS) + 1  # the faults and the metadata-service row
    with DagsterInstance.local_temp(str(tmp_path / "dagster"), overrides={"telemetry": {"enabled": False}}) as instance:
        photos_meta, faces_meta, table = run()
        assert (photos_meta["photos"], photos_meta["photos_ok"], photos_meta["photos_failed"]) == (20, 20 - broken, broken)
        assert (photos_meta["photos_refused"], photos_meta["fetched"], photos_meta["fetch_attempts"]) == (2, 20 - broken, 20)
        errors = dict(zip(table.column("photo_ref").to_pylist(), table.column("error").to_pylist(), strict=True))
        for fault, path in faulty.items():
            assert errors[photo_server.url(quote(path))].startswith(GALLERY_FAULTS[fault][1]), fault
            assert photo_server.hits["/" + quote(path)] == GALLERY_FAULTS[fault][2], fault
        assert errors[token_url] == (
            f"refused: 169.254.169.254:80 is not an allowed photo host (allowed: 127.0.0.1:{photo_server.port};"
            " add it to FACEPIPELINE_PHOTO_HOSTS)"
        )
        assert "SECRET-TOKEN" not in photos_meta["failures"] and "SECRET-TOKEN" not in json.dumps(photos_meta["summary"])
        assert (faces_meta["faces_total"], faces_meta["faces_embedded"], faces_meta["faces_failed"]) == (20, 20 - broken, broken)
        assert faces_meta["faces_reused"] == 0

        # The server is fixed, and one good photo moves to a new URL with the same bytes.
        for path in faulty.values():
            photo_server.routes["/" + quote(path)] = Route(body=(folder / path).read_bytes())
        moved = photos[0]
        photo_server.routes["/renamed/" + quote(moved)] = Route(body=(folder / moved).read_bytes())
        with psycopg.connect(gallery_dsn, autocommit=True) as conn:
            conn.execute("update photos set url = %s where storage_path = %s", [photo_server.url("renamed/" + quote(moved)), moved])
        hits_before = dict(photo_server.hits)

        photos_meta, faces_meta, table = run()
        assert (photos_meta["photos_ok"], photos_meta["photos_failed"], photos_meta["photos_refused"]) == (19, 1, 1)
        assert (photos_meta["fetched"], photos_meta["from_cache"]) == (len(GALLERY_FAULTS) + 1, 20 - broken - 1)
        fetched_again = {path for path, n in photo_server.hits.items() if n != hits_before.get(path, 0)}
        assert fetched_again == {"/" + quote(p) for p in faulty.values()} | {"/renamed/" + quote(moved)}
        assert all(photo_server.hits[path] - hits_before.get(path, 0) == 1 for path in fetched_again)
        # Cached by content: the moved photo's bytes are stored once and its face is not embedded again.
        objects = [p for p in (settings.home / "photos" / "objects").rglob("*") if p.is_file()]
        assert len(objects) == 19
        assert (faces_meta["faces_embedded"], faces_meta["faces_reused"], faces_meta["faces_failed"]) == (len(GALLERY_FAULTS), 20 - broken, 1)
