"""POST /v1/inspect over a real socket (the bundled model): the same inspection the library gives, and 400s."""

import json
import urllib.error
import urllib.request

import pytest
from live_server import start_server

from gpt2kit.paths import BUNDLED_DIR

TEXT = "ROMEO.\nBut soft, what light through yonder window breaks?"


@pytest.fixture(scope="module")
def url():
    proc, url = start_server(BUNDLED_DIR, "--dtype", "float32")  # the numbers the test's own load gives
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def post(url, body, path="/v1/inspect"):
    request = urllib.request.Request(
        url + path, method="POST", headers={"Content-Type": "application/json"}, data=json.dumps(body).encode()
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_inspect_answers_what_the_library_gives(url):
    import gpt2kit
    from gpt2kit.provenance.inspect import inspect

    status, d = post(url, {"text": TEXT, "alternatives": 4})
    assert status == 200, d
    assert d["model"] == "bundled" and d["text"] == TEXT
    lm = gpt2kit.load(device="cpu", dtype="float32")
    mine = inspect(lm, TEXT, alternatives=4).as_dict()
    assert [t["id"] for t in d["tokens"]] == [t["id"] for t in mine["tokens"]]
    assert [t["rank"] for t in d["tokens"]] == [t["rank"] for t in mine["tokens"]]
    for theirs, ours in zip(d["tokens"], mine["tokens"]):
        assert theirs["prob"] == pytest.approx(ours["prob"], rel=1e-3, abs=1e-7)
        assert len(theirs["alternatives"]) == 4
    assert [b["count"] for b in d["buckets"]] == [b["count"] for b in mine["buckets"]]
    assert set(d["histograms"]) == {"ratio", "entropy"}


def test_inspect_is_in_the_openapi_schema(url):
    with urllib.request.urlopen(url + "/openapi.json", timeout=30) as r:
        schema = json.load(r)
    assert "/v1/inspect" in schema["paths"] and "400" in schema["paths"]["/v1/inspect"]["post"]["responses"]


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({}, 400, "text"),
        ({"text": ""}, 400, "text"),
        ({"text": 5}, 400, "text"),
        ({"text": "hi", "alternatives": 101}, 400, "alternatives"),
        ({"text": "hi", "context_length": -1}, 400, "context_length"),
        ({"text": "hi", "model": "nope"}, 404, "model"),
        ({"text": "hi " * 9000}, 400, "text"),
    ],
)
def test_bad_requests_name_the_field(url, body, status, param):
    got, d = post(url, body)
    assert got == status, d
    assert d["error"]["param"] == param, d
