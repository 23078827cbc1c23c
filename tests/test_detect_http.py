"""POST /v1/detect: the watermark's z-test over HTTP, the same verdict as gpt2kit.provenance's detect."""

import json
import urllib.error
import urllib.request

import pytest
from live_server import start_server

import gpt2kit
from gpt2kit.provenance.watermark import detect

KEY = 15485863


@pytest.fixture(scope="module")
def server():
    proc, url = start_server("bundled", "--dtype", "float32")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def post(url, body):
    req = urllib.request.Request(url + "/v1/detect", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_watermarked_text_is_detected_and_plain_text_is_not(server):
    lm = gpt2kit.load(None, dtype="float32")
    marked = lm.generate("The king", length=120, seed=3, include_prefix=False, top_k=40, watermark_key=KEY)[0]
    plain = lm.generate("The king", length=120, seed=3, include_prefix=False, top_k=40)[0]
    code, found = post(server, {"text": marked, "watermark_key": KEY})
    assert code == 200 and found["watermarked"] and found["z"] > 4
    assert found["z"] == pytest.approx(detect(lm.tokenizer.encode(marked), key=KEY).z)
    code, found = post(server, {"text": plain, "watermark_key": KEY})
    assert code == 200 and not found["watermarked"]
    code, found = post(server, {"text": marked, "watermark_key": KEY, "ignore_repeated_ngrams": True})
    ids = lm.tokenizer.encode(marked)
    assert code == 200 and found["scored"] == detect(ids, key=KEY, ignore_repeated_ngrams=True).scored


@pytest.mark.parametrize(
    "body, field",
    [
        ({"text": "hi"}, "watermark_key"),
        ({"text": "hi there", "watermark_key": 1, "watermark_gamma": 1.5}, "watermark_gamma"),
    ],
)
def test_mistakes_are_400s_naming_the_field(server, body, field):
    code, answer = post(server, body)
    assert code == 400 and field in json.dumps(answer["error"])
