"""The samplers of issue 29 and the watermark through /v1/completions and /v1/chat/completions, under vLLM's and
llama.cpp's names: a seed gives the Python API's text for the same settings, and bad values are 400s naming
their field."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from live_server import start_server

from gpt2kit.provenance.watermark import detect
from gpt2kit.server.chat import ChatTemplate

PROMPT, LENGTH, SEED = "The old house at the end of the road", 10, 11
STOPS = ("\nUser:", "\nAssistant:", "\nSystem:")  # serve's default --chat-stop
# One case per sampler field (with the settings it needs to act), as a request sends them.
CASES = {
    "min_p": {"min_p": 0.9},
    "typical_p": {"typical_p": 0.3},
    "epsilon_cutoff": {"epsilon_cutoff": 2e-5},
    "eta_cutoff": {"eta_cutoff": 2e-4},
    "top_n_sigma": {"top_n_sigma": 0.5},
    "mirostat": {"mirostat": 2},
    "mirostat_tau": {"mirostat": 2, "mirostat_tau": 2.0},
    "mirostat_eta": {"mirostat": 2, "mirostat_tau": 2.0, "mirostat_eta": 0.9},
    "dry_multiplier": {"dry_multiplier": 5.0, "dry_allowed_length": 0},
    "dry_base": {"dry_multiplier": 5.0, "dry_base": 3.0, "dry_allowed_length": 0},
    "dry_allowed_length": {"dry_multiplier": 5.0, "dry_allowed_length": 1},
    "dry_penalty_last_n": {"dry_multiplier": 5.0, "dry_allowed_length": 0, "dry_penalty_last_n": 4},
    "dry_sequence_breakers": {"dry_multiplier": 5.0, "dry_allowed_length": 0, "dry_sequence_breakers": [" the"]},
    "xtc_threshold": {"xtc_threshold": 1e-5, "xtc_probability": 1.0},
    "xtc_probability": {"xtc_threshold": 1e-5, "xtc_probability": 0.5},
}


@pytest.fixture(scope="module")
def server(hf_tiny):
    proc, url = start_server(hf_tiny, "--dtype", "float32")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def post(url, path, body):
    """(status, JSON answer) of a raw POST, as vLLM's and llama.cpp's clients send their extra fields."""
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def served(url, endpoint, fields, *, prompt=PROMPT, length=LENGTH):
    """The text of one completion or chat reply with `fields`."""
    body = {"max_tokens": length, "seed": SEED, **fields}
    if endpoint == "chat":
        status, answer = post(url, "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]})
        assert status == 200, answer
        return answer["choices"][0]["message"]["content"]
    status, answer = post(url, "/v1/completions", {**body, "prompt": prompt})
    assert status == 200, answer
    return answer["choices"][0]["text"]


def library(lm, endpoint, settings, *, prompt=PROMPT, length=LENGTH):
    """The same sample from the Python API: chat is its rendered transcript, ended at a turn marker."""
    stop = ()
    if endpoint == "chat":
        prompt = ChatTemplate(None, STOPS).render([{"role": "user", "content": prompt}])
        stop = STOPS
    return lm.generate(prompt, length=length, seed=SEED, include_prefix=False, stop=stop, **settings)[0]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_each_sampler_gives_the_python_apis_text(server, lm_tiny, endpoint):
    # All at once, so that the server batches rows of different settings: each still gets its own text.
    with ThreadPoolExecutor(len(CASES) + 1) as pool:
        texts = dict(zip(["plain", *CASES], pool.map(lambda f: served(server, endpoint, f), [{}, *CASES.values()])))
    plain = texts["plain"]
    assert plain == library(lm_tiny, endpoint, {})
    changed = 0
    for name, fields in CASES.items():
        assert texts[name] == library(lm_tiny, endpoint, fields), name
        changed += texts[name] != plain
    # The oracle can fail: the fields reach the samplers (a field the server dropped would give `plain`).
    assert changed >= len(CASES) - 2


def test_every_sampler_at_once_and_llama_cpps_repeat_penalty(server, lm_tiny):
    fields = {k: v for case in CASES.values() for k, v in case.items() if not k.startswith("mirostat")}
    assert served(server, "completions", fields) == library(lm_tiny, "completions", fields)
    assert (
        served(server, "completions", {"repeat_penalty": 1.5})
        == library(lm_tiny, "completions", {"repetition_penalty": 1.5})
        != library(lm_tiny, "completions", {})
    )


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_a_watermarked_completion_is_detected(server, lm_tiny, endpoint):
    key = 15485863  # transformers' default hashing key
    fields = {"watermark": {"key": key, "gamma": 0.25, "delta": 4.0}, "temperature": 1.0}
    text = served(server, endpoint, fields, length=48)
    assert text == library(
        lm_tiny, endpoint, {"watermark_key": key, "watermark_gamma": 0.25, "watermark_delta": 4.0}, length=48
    )
    ids = lm_tiny.tokenizer.encode_ordinary(text)
    assert detect(ids, key=key, gamma=0.25).z > 4
    plain = lm_tiny.tokenizer.encode_ordinary(served(server, endpoint, {}, length=48))
    assert detect(plain, key=key, gamma=0.25).z < 4


BAD = [
    ({"min_p": 1.5}, "min_p"),
    ({"typical_p": -0.1}, "typical_p"),
    ({"epsilon_cutoff": 1.0}, "epsilon_cutoff"),
    ({"eta_cutoff": -1}, "eta_cutoff"),
    ({"top_n_sigma": float("inf")}, "top_n_sigma"),
    ({"mirostat": 1}, "mirostat"),
    ({"mirostat_tau": -1}, "mirostat_tau"),
    ({"mirostat_eta": 2}, "mirostat_eta"),
    ({"dry_multiplier": -1}, "dry_multiplier"),
    ({"dry_base": 0.5}, "dry_base"),
    ({"dry_allowed_length": -1}, "dry_allowed_length"),
    ({"dry_penalty_last_n": -2}, "dry_penalty_last_n"),
    ({"dry_sequence_breakers": [""]}, "dry_sequence_breakers.0"),
    ({"dry_sequence_breakers": "\n"}, "dry_sequence_breakers"),
    ({"xtc_threshold": 1.5}, "xtc_threshold"),
    ({"xtc_probability": 2}, "xtc_probability"),
    ({"repeat_penalty": 0}, "repeat_penalty"),
    ({"repeat_penalty": 1.2, "repetition_penalty": 1.3}, "repeat_penalty"),
    ({"watermark": {"key": 0}}, "watermark.key"),
    ({"watermark": {"key": 1, "gamma": 1.0}}, "watermark.gamma"),
    ({"watermark": {"key": 1, "delta": 0}}, "watermark.delta"),
    ({"watermark": {"key": 1, "context_width": 0}}, "watermark.context_width"),
    ({"watermark": {}}, "watermark.key"),
]


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_bad_values_are_400s_naming_the_field(server, endpoint):
    path, base = (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})
        if endpoint == "chat"
        else ("/v1/completions", {"prompt": "Hi"})
    )
    for fields, param in BAD:
        status, answer = post(server, path, {**base, "max_tokens": 1, **fields})
        assert (status, answer["error"]["param"]) == (400, param), (fields, answer)
