"""Several models in one server (`gpt2kit serve --model A --model B`): the real server over a socket, the
official openai client, each model's text against the library's own generation from that model."""

import concurrent.futures
import json
import signal
import threading
import urllib.request

import openai
import pytest
import torch
from conftest import run_cli
from live_server import free_port, start_server
from test_api import metrics, post
from test_scheduling import stream_events

import gpt2kit


def tiny_model(folder, *, seed, n_positions=64, n_embd=32, n_layer=2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=4)).save_pretrained(
        folder
    )
    return folder


def get(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second tiny model, unlike hf_tiny in its weights (another seed) and its context (128)."""
    return tiny_model(tmp_path_factory.mktemp("other") / "other-folder", seed=1, n_positions=128, n_layer=1)


@pytest.fixture(scope="module")
def two(hf_tiny, other):
    """hf_tiny under its folder's name (tiny), the other under an id given on the command line."""
    proc, url = start_server([hf_tiny, f"other={other}"])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def lm_other(other):
    return gpt2kit.load(other, device="cpu", dtype="float32")


def test_models_lists_both_with_their_memory(two):
    client = openai.OpenAI(base_url=two + "/v1", api_key="unused")
    cards = client.models.list().data
    assert [m.id for m in cards] == ["tiny", "other"]
    listed = get(two + "/v1/models")["data"]
    assert [m["max_model_len"] for m in listed] == [64, 128]
    for card, (n_layer, n_ctx) in zip(listed, [(2, 64), (1, 128)]):
        memory = card["memory"]
        # float32 weights: GPT-2's parameter count x 4 bytes (wte shared with the head)
        n_params = (50257 + n_ctx) * 32 + n_layer * (12 * 32 * 32 + 13 * 32) + 2 * 32
        assert memory["weights_bytes"] >= n_params * 4
        kv_values = 16 * n_ctx * n_layer * 2 * 32  # max-batch 16 x context, K and V
        # 4 bytes each, or 2 where `--dtype auto` took a reduced format on the CPU kernels (an fp16 cache)
        assert memory["kv_budget_bytes"] in (kv_values * 4, kv_values * 2)
        assert memory["expected_bytes"] == n_params * 4 + kv_values * 4  # the check before loading counts fp32
    h = get(two + "/health")
    assert h["model"] == "tiny" and [m["id"] for m in h["models"]] == ["tiny", "other"]
    assert h["resident_bytes"] > sum(m["memory"]["weights_bytes"] for m in h["models"])


def test_the_model_field_picks_the_model(two, lm_tiny, lm_other):
    client = openai.OpenAI(base_url=two + "/v1", api_key="unused")
    for name, lm in (("tiny", lm_tiny), ("other", lm_other), (None, lm_tiny)):  # no model: the first
        # greedy, and seeded sampling among the top 3 (a random model's full distribution is so flat that
        # float32 rounding, batched against alone, can move a draw across a boundary)
        for seed, temperature in ((None, 0), (7, 1.0)):
            kwargs = {"seed": seed} if seed is not None else {}
            r = client.completions.create(
                model=name,
                prompt="Hello there",
                max_tokens=12,
                temperature=temperature,
                extra_body={"top_k": 3},
                **kwargs,
            )
            expected = lm.generate(
                "Hello there",
                length=12,
                temperature=temperature,
                top_k=3,
                seed=seed,
                include_prefix=False,
                stop_at_eot=False,
            )[0]
            assert r.model == (name or "tiny") and r.choices[0].text == expected, (name, seed)
    tiny_text = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0)
    other_text = client.completions.create(model="other", prompt="Hello there", max_tokens=12, temperature=0)
    assert tiny_text.choices[0].text != other_text.choices[0].text  # the two models really differ
    chat = client.chat.completions.create(
        model="other", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert chat.model == "other"
    # /tokenize answers with the model's own context; /v1/info describes the model asked for
    assert [post(two, "/tokenize", {"prompt": "Hi", "model": m})[1]["max_model_len"] for m in ("tiny", "other")] == [
        64,
        128,
    ]
    assert get(two + "/v1/info?model=other")["n_ctx"] == 128 and get(two + "/v1/info")["n_ctx"] == 64
    assert post(two, "/detokenize", {"tokens": [15496], "model": "other"}) == (200, {"prompt": "Hello"})


def test_an_unknown_model_is_refused_naming_those_served(two):
    client = openai.OpenAI(base_url=two + "/v1", api_key="unused")
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="Hi", max_tokens=2)
    assert "`gpt-4`" in str(e.value) and "`tiny`" in str(e.value) and "`other`" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])
    for path, body in (
        ("/tokenize", {"prompt": "x", "model": "gpt-4"}),
        ("/detokenize", {"tokens": [1], "model": "gpt-4"}),
        ("/v1/next_token", {"prompt": "x", "model": "gpt-4"}),
    ):
        status, answer = post(two, path, body)
        assert status == 404 and answer["error"]["code"] == "model_not_found" and answer["error"]["param"] == "model"


def test_metrics_are_per_model(two):
    client = openai.OpenAI(base_url=two + "/v1", api_key="unused")
    before = metrics(two)
    r = client.completions.create(model="other", prompt="Count me", max_tokens=5, temperature=0)
    after = metrics(two)

    def moved(name, model):
        key = (name, (("model", model),))
        return after[key] - before.get(key, 0)

    assert moved("gpt2kit_prompt_tokens_total", "other") == r.usage.prompt_tokens
    assert moved("gpt2kit_generation_tokens_total", "other") == r.usage.completion_tokens
    assert moved("gpt2kit_engine_requests_total", "other") == 1
    assert moved("gpt2kit_generation_tokens_total", "tiny") == 0 and moved("gpt2kit_engine_requests_total", "tiny") == 0
    models = get(two + "/v1/models")["data"]
    for card in models:
        for kind, field in (("weights", "weights_bytes"), ("kv_budget", "kv_budget_bytes")):
            labels = tuple(sorted({"model": card["id"], "kind": kind}.items()))
            assert after[("gpt2kit_model_memory_bytes", labels)] == card["memory"][field]
    assert after[("process_resident_memory_bytes", ())] > 0


def test_models_that_do_not_fit_are_refused_before_loading(hf_tiny, other, tmp_path):
    r = run_cli("serve", "--model", hf_tiny, "--model", other, "--max-memory", "1M", "--port", free_port(), timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert (
        len(r.stderr.strip().splitlines()) == 1 and "tiny" in line and "other-folder" in line and "--max-memory" in line
    )
    # without --max-memory, the memory available: a KV budget of a trillion positions is over any machine's
    r = run_cli("serve", "--model", hf_tiny, "--max-batch-tokens", 10**12, "--port", free_port(), timeout=60)
    assert r.returncode == 2 and "MemAvailable" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # ids that clash, or one name for several models: refused before anything loads or binds
    from gpt2kit.errors import UserError
    from gpt2kit.options import ServeOptions
    from gpt2kit.server import serve

    with pytest.raises(UserError, match="ID=PATH"):
        serve([hf_tiny, hf_tiny], ServeOptions(port=free_port()))
    with pytest.raises(UserError, match="--served-name"):
        serve([hf_tiny, other], ServeOptions(port=free_port(), served_name="x"))
    with pytest.raises(UserError, match="ID=PATH"):
        serve(["=" + str(hf_tiny)], ServeOptions(port=free_port()))


def test_sigterm_drains_every_engine(tmp_path):
    # Rows of ~1000 tokens (end of text banned) outlast the 1 s the server gives them, on both models.
    a = tiny_model(tmp_path / "a", seed=0, n_positions=1024, n_embd=128, n_layer=4)
    b = tiny_model(tmp_path / "b", seed=1, n_positions=1024, n_embd=128, n_layer=4)
    proc, url = start_server([a, b], "--dtype", "float32", "--shutdown-timeout", "1")
    bodies = [
        {"model": m, "prompt": f"Long {m}", "max_tokens": 1000, "seed": 1, "logit_bias": {"50256": -100}}
        for m in ("a", "b")
    ]
    started = threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(stream_events, url, body, lambda k: k == 1 and started.release()) for body in bodies]
        for _ in bodies:
            assert started.acquire(timeout=60)
        proc.send_signal(signal.SIGTERM)
        outcomes = [f.result(timeout=90) for f in futures]
    assert proc.wait(timeout=60) == 0
    for events in outcomes:  # each engine ended its row at the deadline: an error event, then [DONE]
        assert events[-1] == "[DONE]" and any("error" in ev for ev in events[:-1]), events[-3:]


AUTHORS = {  # two small "authors", unlike in every word, for two fine-tunes
    "shire": "The hobbit walked slowly along the green road to the shire, and the elves sang under the old trees.\n",
    "sea": "An old man fished alone in a skiff in the gulf stream, and the sharks came at night for his marlin.\n",
}


def test_a_new_user_fine_tunes_two_authors_and_serves_both(tmp_path):
    """The README's workflow: two texts, two fine-tunes (the real CLI), one server for both."""
    runs = {}
    for name, line in AUTHORS.items():
        (tmp_path / f"{name}.txt").write_text(line * 40)
        r = run_cli(
            "finetune",
            "--dataset",
            tmp_path / f"{name}.txt",
            "--from-scratch",
            "--n-layer",
            "2",
            "--n-embd",
            "32",
            "--n-head",
            "2",
            "--n-ctx",
            "32",
            "--batch-size",
            "4",
            "--steps",
            "40",
            "--learning-rate",
            "1e-2",
            "--checkpoint-dir",
            tmp_path / "checkpoint",
            "--run-name",
            name,
            "--no-progress",
            "--save-every",
            "1000",
            "--sample-every",
            "0",
            timeout=900,
        )
        assert r.returncode == 0, r.stderr
        runs[name] = tmp_path / "checkpoint" / name
    proc, url = start_server([runs["shire"], runs["sea"]])
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["shire", "sea"]  # the run folders' names
        texts = {}
        for name, run in runs.items():
            texts[name] = (
                client.completions.create(model=name, prompt="The", max_tokens=12, temperature=0).choices[0].text
            )
            lm = gpt2kit.load(run, device="cpu", dtype="float32")
            assert texts[name] == lm.generate("The", length=12, temperature=0, include_prefix=False)[0]
        for name, text in texts.items():  # each writes like its own author
            own = set(AUTHORS[name].split())
            other = set(next(v for k, v in AUTHORS.items() if k != name).split()) - own
            words = text.split()
            assert sum(w in own for w in words) > sum(w in other for w in words), texts
    finally:
        proc.terminate()
        proc.wait(timeout=30)
