"""The photo fetch policy (OWASP SSRF rules) against the real HTTP server on 127.0.0.1.

Every refusal is checked two ways: the photo fails with a reason that names the host (never the
query string), and the server saw no request at all (no connection for a disallowed host).
"""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facepipeline.photo_policy import (
    HostRule,
    PhotoPolicy,
    PhotoPolicyError,
    PhotoRefused,
    address_kind,
    parse_hosts,
    policy_for_source,
    supabase_host_from_dsn,
)
from facepipeline.photos import PhotoCache, summarize
from tests.conftest import FACES, Route

JPEG = (FACES / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()
TOKEN = "sig-abc123-SECRET"


def served(photo_server) -> str:
    """The test server's host:port."""
    return photo_server.base_url.removeprefix("http://")


def fetch(tmp_path, policy, refs, **kwargs):
    with PhotoCache(tmp_path / "cache", retries=0, policy=policy, **kwargs) as cache:
        return cache.fetch_all(refs)


# -- configuration ---------------------------------------------------------------------------------


def test_hosts_are_parsed_from_a_comma_separated_list():
    assert parse_hosts(" abc.supabase.co, 127.0.0.1:8000,[::1]:80 ,https://cdn.example:8443/, EXAMPLE.org.,") == (
        HostRule("abc.supabase.co"),
        HostRule("127.0.0.1", 8000),
        HostRule("::1", 80),
        HostRule("cdn.example", 8443),
        HostRule("example.org"),
    )
    assert parse_hosts("") == () and parse_hosts(None) == ()
    for bad in ("host:port", "a.example/photos", "user:pw@a.example", "a.example:99999", "http://"):
        with pytest.raises(PhotoPolicyError, match="not a host or host:port"):
            parse_hosts(bad)


@settings(deadline=None)  # a loaded CI machine is no bug
@given(st.text(max_size=60))
def test_any_text_parses_to_host_rules_or_a_clear_error(text):
    try:
        rules = parse_hosts(text)
    except PhotoPolicyError as exc:
        assert str(exc).startswith("FACEPIPELINE_PHOTO_HOSTS: not a host or host:port")
    else:
        assert all(rule.host and rule.host == rule.host.lower() and (rule.port is None or 0 <= rule.port <= 65535) for rule in rules)
        assert parse_hosts(",".join(map(str, rules))) == rules  # what the policy shows parses back to itself


def test_the_supabase_project_host_is_derived_from_the_source():
    assert supabase_host_from_dsn("postgresql://postgres:pw@db.abcdefgh.supabase.co:5432/postgres") == HostRule("abcdefgh.supabase.co")
    pooler = "postgresql://postgres.abcdefgh:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
    assert supabase_host_from_dsn(pooler) == HostRule("abcdefgh.supabase.co")
    assert supabase_host_from_dsn("host=db.abcdefgh.supabase.co user=postgres password=pw") == HostRule("abcdefgh.supabase.co")
    for other in ("postgresql://postgres@127.0.0.1:5432/x", "postgresql://u@db.evil.example.supabase.co.evil.example/x", "not a dsn ::", None):
        assert supabase_host_from_dsn(other) is None

    supabase = policy_for_source("supabase", supabase_url="https://abcdefgh.supabase.co", extra_hosts="cdn.example")
    assert supabase == PhotoPolicy((HostRule("cdn.example"), HostRule("abcdefgh.supabase.co")))
    assert policy_for_source("postgres", database_url=pooler).hosts == (HostRule("abcdefgh.supabase.co"),)
    assert policy_for_source("postgres:postgresql://postgres@127.0.0.1/x").hosts == ()  # a local database: only the list
    folder = policy_for_source("folder:/photos/people/../people")
    assert folder == PhotoPolicy((), (Path("/photos/people"),))


def test_the_embedded_gallery_allows_its_own_photo_server_and_nothing_else(tmp_path):
    assert policy_for_source("embedded", embedded_home=tmp_path).hosts == ()  # not started yet: nothing to allow
    (tmp_path / "photo_server.json").write_text(json.dumps({"pid": None, "port": 48123, "root": "/x"}))
    assert policy_for_source("embedded", embedded_home=tmp_path).hosts == (HostRule("127.0.0.1", 48123),)


@pytest.mark.parametrize(
    ("address", "kind"),
    [("169.254.169.254", "link-local"), ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
     ("100.64.0.1", "non-public"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"),
     ("::1", "loopback"), ("fe80::1", "link-local"), ("fd00::1", "private"), ("::ffff:169.254.169.254", "link-local"),
     ("8.8.8.8", None), ("2606:4700::1111", None)],
)
def test_address_kinds(address, kind):
    import ipaddress

    assert address_kind(ipaddress.ip_address(address)) == kind


# -- fetching --------------------------------------------------------------------------------------


def test_only_allowed_hosts_are_fetched_and_a_refusal_makes_no_connection(tmp_path, photo_server):
    url = photo_server.add("a.jpg", JPEG) + f"?token={TOKEN}"
    metadata = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    default = policy_for_source("supabase", supabase_url="https://abcdefgh.supabase.co")
    refused, metadata_record, ftp = fetch(tmp_path, default, [url, metadata, "ftp://abcdefgh.supabase.co/a.jpg"])
    assert refused.error == (
        f"refused: 127.0.0.1:{photo_server.base_url.rsplit(':', 1)[1]} is not an allowed photo host"
        " (allowed: abcdefgh.supabase.co; add it to FACEPIPELINE_PHOTO_HOSTS)"
    )
    assert metadata_record.error.startswith("refused: 169.254.169.254:80 is not an allowed photo host")
    assert ftp.error == "refused: ftp:// is not allowed (photos are fetched over http(s) only)"
    assert photo_server.hits == {}  # not one request reached the server
    assert summarize([refused, metadata_record, ftp]).refused == 3

    [ok] = fetch(tmp_path, default.with_hosts(HostRule("127.0.0.1", photo_server.port)), [url])
    assert ok.ok and photo_server.hits == {f"/a.jpg?token={TOKEN}": 1}


def test_a_listed_name_that_resolves_to_a_private_address_is_refused_before_connecting(tmp_path, photo_server):
    """``localhost`` resolves to 127.0.0.1: listing the *name* does not allow a loopback address."""
    url = photo_server.add("a.jpg", JPEG).replace("127.0.0.1", "localhost")
    [record] = fetch(tmp_path, PhotoPolicy((HostRule("localhost", photo_server.port),)), [url])
    assert not record.ok and photo_server.hits == {}
    assert record.error.startswith("refused: localhost resolves to ") and "a loopback address" in record.error
    assert record.error.endswith("(only an allow-list entry naming that IP allows it)")


def test_a_wrong_port_of_an_allowed_host_is_refused(tmp_path, photo_server):
    url = photo_server.add("a.jpg", JPEG)
    [record] = fetch(tmp_path, PhotoPolicy((HostRule("127.0.0.1", 1),)), [url])
    assert record.error.startswith(f"refused: 127.0.0.1:{photo_server.port} is not an allowed photo host")
    assert photo_server.hits == {}


def test_every_redirect_hop_is_checked(tmp_path, photo_server):
    target = photo_server.add("target.jpg", JPEG)
    hops = {
        "to_metadata": "http://169.254.169.254/latest/meta-data/",
        "to_file": "file:///etc/passwd",
        "to_unlisted": "http://photos.evil.example/a.jpg",
        "to_allowed": "/target.jpg",  # relative, on the same allowed server
        "to_loopback_name": target.replace("127.0.0.1", "localhost"),
    }
    urls = {name: photo_server.add(name, status=302, location=location) for name, location in hops.items()}
    loop = photo_server.add("loop", status=307, location="/loop")
    policy = PhotoPolicy((HostRule("127.0.0.1", photo_server.port), HostRule("localhost", photo_server.port)))
    records = dict(zip([*urls, "loop"], fetch(tmp_path, policy, [*urls.values(), loop]), strict=True))
    assert records["to_metadata"].error.startswith("refused: redirect to 169.254.169.254:80 is not an allowed photo host")
    assert records["to_file"].error == "refused: a redirect to file:// is not allowed (photos are fetched over http(s) only)"
    assert records["to_unlisted"].error.startswith("refused: redirect to photos.evil.example:80 is not an allowed photo host")
    assert records["to_loopback_name"].error.startswith("refused: localhost resolves to ")
    assert records["to_allowed"].ok and records["to_allowed"].size == len(JPEG)
    assert records["loop"].error == "too many redirects (more than 3)"
    assert photo_server.hits["/loop"] == 4  # the first request and three redirects followed
    assert photo_server.hits["/target.jpg"] == 1  # only through the allowed redirect


def test_file_references_only_for_the_folder_source_and_only_inside_its_folder(tmp_path):
    inside = FACES / "Colin_Powell" / "Colin_Powell_0001.jpg"
    escaping = (FACES / "Colin_Powell").as_uri() + "/../../../../../etc/passwd"
    gallery = fetch(tmp_path, policy_for_source("postgres", database_url="postgresql://u@db.abcdefgh.supabase.co/x"), [inside.as_uri()])
    assert gallery[0].error == "refused: file:// photos are only read for the local folder source"
    folder = fetch(tmp_path, policy_for_source(f"folder:{FACES / 'Colin_Powell'}"), [inside.as_uri(), escaping])
    assert folder[0].ok
    assert folder[1].error == "refused: a file:// photo outside the source's folder"


def test_a_refusal_reason_never_carries_the_query_string(tmp_path):
    refs = [f"https://evil.example/a.jpg?token={TOKEN}", f"gopher://evil.example/?{TOKEN}", f"http://[::1]:80/x?{TOKEN}"]
    records = fetch(tmp_path, PhotoPolicy(), refs)
    assert all(not r.ok and r.error.startswith("refused: ") and TOKEN not in r.error for r in records)


def test_the_policy_check_alone_needs_no_network():
    policy = PhotoPolicy((HostRule("abcdefgh.supabase.co"),))
    policy.check("https://abcdefgh.supabase.co/storage/v1/object/public/photos/a.jpg")
    policy.check("http://ABCDEFGH.supabase.co./a.jpg")
    for refused in ("https://abcdefgh.supabase.co:8443/a.jpg", "https://abcdefgh.supabase.co.evil.example/a.jpg",
                    "https://evil.example/abcdefgh.supabase.co/a.jpg", "http://2852039166/", "//abcdefgh.supabase.co/a.jpg"):
        with pytest.raises(PhotoRefused):
            policy.check(refused)


def test_the_test_server_is_reachable_when_listed(tmp_path, photo_server):
    photo_server.routes["/b.jpg"] = Route(body=JPEG)
    [record] = fetch(tmp_path, PhotoPolicy(parse_hosts(served(photo_server))), [photo_server.url("b.jpg")])
    assert record.ok


def test_the_embedded_gallerys_photo_daemon_is_allowed_on_its_recorded_port_only(tmp_path, small_faces):
    """The real detached photo server of the embedded gallery: its port, recorded in its state
    folder, is what the embedded source allows; the same address on another port is not."""
    from facepipeline.gallery import photo_server

    state = tmp_path / "gallery"
    base = photo_server.start_daemon(small_faces, state)
    try:
        photo = next(small_faces.glob("*/*.jpg")).relative_to(small_faces)
        policy = policy_for_source("embedded", embedded_home=state)
        assert policy.hosts == (HostRule("127.0.0.1", int(base.rsplit(":", 1)[1])),)
        [record] = fetch(tmp_path, policy, [photo_server.url_for(base, photo)])
        assert record.ok and record.size == (small_faces / photo).stat().st_size
        with pytest.raises(PhotoRefused):
            policy.check(photo_server.url_for(base.rsplit(":", 1)[0] + ":1", photo))
    finally:
        photo_server.stop_daemon(state)


def test_the_artifact_store_builds_the_policy_from_the_source_and_the_listed_hosts(monkeypatch, tmp_path):
    from resources import ArtifactStoreResource, FaceSourceResource

    monkeypatch.setenv("FACEPIPELINE_PHOTO_HOSTS", "cdn.example")
    source = FaceSourceResource(source="supabase", supabase_url="https://abcdefgh.supabase.co", service_role_key="not-used")
    artifacts = ArtifactStoreResource(home=str(tmp_path))
    assert artifacts.photo_policy(source).hosts == (HostRule("cdn.example"), HostRule("abcdefgh.supabase.co"))
    assert artifacts.photo_policy() == PhotoPolicy((HostRule("cdn.example"),))  # no source: the list only, no file://
    configured = ArtifactStoreResource(home=str(tmp_path), photo_hosts="127.0.0.1:9")  # the field wins over the variable
    assert configured.photo_policy(source).hosts == (HostRule("127.0.0.1", 9), HostRule("abcdefgh.supabase.co"))
    with configured.photo_cache(configured.photo_policy(source)) as cache:
        assert cache.policy == configured.photo_policy(source)
    monkeypatch.setenv("FACEPIPELINE_PHOTO_HOSTS", "cdn.example/photos")
    with pytest.raises(PhotoPolicyError, match=r"^FACEPIPELINE_PHOTO_HOSTS: not a host or host:port: 'cdn.example/photos'$"):
        artifacts.photo_policy(source)
