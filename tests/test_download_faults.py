"""Downloads under injected faults, from real HTTP servers on 127.0.0.1 (http_server.py's fault queue).

Each fault is one a real server or network commits: bytes corrupted on the way, a Content-Length that
lies either way, a 200 or a wrong 206 answering a Range request, a server that goes silent, redirects
to another host. Every test checks the bytes that land, and what went over the wire.
"""

import hashlib
import os
import random
import sys

import pytest
from http_server import FileServer, HubMirror

from gpt2kit import hub
from gpt2kit.errors import UserError

DATA = random.Random(0).randbytes(300_000)
PATH = "/files/blob.bin"


@pytest.fixture
def plain():
    """One server, Azure-like: Content-MD5 on every answer, no size but Content-Length."""
    s = FileServer()
    s.files[PATH] = DATA
    yield s
    s.close()


@pytest.fixture
def mirror():
    """The hub and its CDN: the sha256 and the size come from the hub's redirect, the bytes from the CDN."""
    m = HubMirror()
    m.add_repo("someone/blob", {"model.safetensors": DATA}, sha="0" * 40)
    yield m
    m.close()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setenv("GPT2KIT_RETRY_DELAY", "0.01")
    monkeypatch.setenv("GPT2KIT_DOWNLOAD_TIMEOUT", "0.5")


def hub_url(mirror):
    return f"{mirror.url}/someone/blob/resolve/{'0' * 40}/model.safetensors"


def requests_for(server, path):
    return [rng for p, rng in server.log if p == path]


def test_bytes_corrupted_on_the_way_are_fetched_again_from_zero(mirror, tmp_path):
    cdn = mirror.cdn_path(DATA)
    mirror.cdn.faults[cdn] = ["corrupt"]
    dest = hub.fetch(hub_url(mirror), tmp_path / "model.safetensors", progress=False)
    assert dest.read_bytes() == DATA
    assert requests_for(mirror.cdn, cdn) == [None, None]  # the second fetch starts over, it does not resume


def test_bytes_corrupted_every_time_are_a_clear_error_and_nothing_is_left(mirror, tmp_path):
    mirror.cdn.faults[mirror.cdn_path(DATA)] = ["corrupt"] * 9
    with pytest.raises(UserError, match="failed its sha256 check twice"):
        hub.fetch(hub_url(mirror), tmp_path / "model.safetensors", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert len(requests_for(mirror.cdn, mirror.cdn_path(DATA))) == 2


@pytest.mark.parametrize("times", [1, 9])
def test_a_content_length_too_long_ends_in_416_which_completes_the_file(plain, tmp_path, times):
    plain.faults[PATH] = ["long_length"] * times
    dest = hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False)
    assert dest.read_bytes() == DATA
    assert plain.answers[-1] == (PATH, 416) and requests_for(plain, PATH)[-1] == f"bytes={len(DATA)}-"


def test_a_content_length_too_long_behind_the_hub_is_caught_by_the_hubs_size(mirror, tmp_path):
    cdn = mirror.cdn_path(DATA)
    mirror.cdn.faults[cdn] = ["long_length"] * 9
    assert hub.fetch(hub_url(mirror), tmp_path / "m", progress=False).read_bytes() == DATA
    assert requests_for(mirror.cdn, cdn) == [None]


def test_a_content_length_too_short_is_resumed_when_the_hub_says_the_size(mirror, tmp_path):
    cdn = mirror.cdn_path(DATA)
    mirror.cdn.faults[cdn] = ["short_length"]
    assert hub.fetch(hub_url(mirror), tmp_path / "m", progress=False).read_bytes() == DATA
    assert requests_for(mirror.cdn, cdn) == [None, f"bytes={len(DATA) - 100}-"]


def test_a_content_length_too_short_is_caught_by_the_checksum(plain, tmp_path):
    plain.faults[PATH] = ["short_length"]
    assert hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False).read_bytes() == DATA
    plain.faults[PATH] = ["short_length"] * 9
    with pytest.raises(UserError, match="md5 check twice"):
        hub.fetch(plain.url + PATH, tmp_path / "again", progress=False)
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.part").exists()


def test_a_200_answer_to_a_range_request_restarts_from_zero(plain, tmp_path):
    """The part holds junk: appending the whole file to it would fail the checksum and cost a second fetch."""
    (tmp_path / "blob.part").write_bytes(b"\0" * 1000)
    plain.faults[PATH] = ["ignore_range"]
    assert hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False).read_bytes() == DATA
    assert requests_for(plain, PATH) == ["bytes=1000-"] and plain.answers == [(PATH, 200)]


def test_a_206_from_the_wrong_offset_restarts_from_zero(plain, tmp_path):
    (tmp_path / "blob.part").write_bytes(DATA[:1000])
    plain.faults[PATH] = ["wrong_offset"]
    assert hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False).read_bytes() == DATA
    assert requests_for(plain, PATH) == ["bytes=1000-", None]


def test_a_stalled_server_times_out_and_the_download_resumes(plain, tmp_path):
    plain.faults[PATH] = ["stall"]
    assert hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False).read_bytes() == DATA
    ranges = requests_for(plain, PATH)
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"


def test_a_server_that_always_stalls_is_a_clear_error(plain, tmp_path):
    plain.faults[PATH] = ["stall"] * 9
    with pytest.raises(UserError, match=r"after 3 tries \(timed out\).*run the same command again"):
        hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False, retries=3)
    assert (tmp_path / "blob.part").is_file() and not (tmp_path / "blob").exists()  # kept for the resume


def test_redirects_keep_the_token_on_its_host_only(mirror, tmp_path):
    """A renamed repository redirects on the hub itself (the token follows), then to the CDN (it does not)."""
    mirror.hub.redirects["/old/blob/resolve/main/model.safetensors"] = (
        f"/someone/blob/resolve/{'0' * 40}/model.safetensors",
        {},
    )
    token = {"Authorization": "Bearer hf_secret", "Cookie": "session=1"}
    hub.fetch(f"{mirror.url}/old/blob/resolve/main/model.safetensors", tmp_path / "m", progress=False, headers=token)
    assert (tmp_path / "m").read_bytes() == DATA
    assert [h.get("Authorization") for _, h in mirror.hub.requests] == ["Bearer hf_secret"] * 2
    assert mirror.cdn.requests and all("Authorization" not in h and "Cookie" not in h for _, h in mirror.cdn.requests)


def test_the_cdns_own_etag_is_not_taken_for_a_checksum(mirror, tmp_path):
    """The CDN's ETag is an MD5 (S3's); only the hub's X-Linked-Etag vouches for the bytes."""
    wrong = hashlib.sha256(b"other").hexdigest()
    path = f"/someone/blob/resolve/{'0' * 40}/model.safetensors"
    location, headers = mirror.hub.redirects[path]
    mirror.hub.redirects[path] = (location, {**headers, "X-Linked-Etag": f'"{wrong}"', "ETag": f'"{wrong}"'})
    with pytest.raises(UserError, match="sha256 check twice"):
        hub.fetch(hub_url(mirror), tmp_path / "m", progress=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd to name what was synced")
def test_the_file_is_synced_before_the_rename_and_the_folder_after(plain, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), real_fsync(fd))[1]
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    hub.fetch(plain.url + PATH, tmp_path / "blob", progress=False)
    part, dest = str(tmp_path / "blob.part"), str(tmp_path / "blob")
    assert events == [("fsync", part), ("replace", part, dest), ("fsync", str(tmp_path))]
