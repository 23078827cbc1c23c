"""The rest of OpenAI's completions API, chat completions, /tokenize, /detokenize and /metrics, through the
official `openai` client against a live server, checked against transformers on the same weights."""

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import torch
from live_server import free_port, start_server

openai = pytest.importorskip("openai")
DEFAULT_STOPS = ["\nUser:", "\nAssistant:", "\nSystem:"]


@pytest.fixture(scope="module")
def server(hf_tiny):
    proc, url = start_server(hf_tiny, "--dtype", "float32")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(hf_tiny):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_tiny, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(hf_tiny, tmp_path_factory):
    """GPT-2's tokenizer as a Hugging Face folder: transformers' BPE and its Jinja chat-template renderer."""
    from transformers import GPT2TokenizerFast

    from gpt2kit.paths import ASSETS_DIR

    folder = tmp_path_factory.mktemp("tok")
    shutil.copy(ASSETS_DIR / "encoder.json", folder / "vocab.json")
    shutil.copy(ASSETS_DIR / "vocab.bpe", folder / "merges.txt")
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer", "model_max_length": 64}')
    return GPT2TokenizerFast.from_pretrained(str(folder))


def post(url, path, body):
    """(status, JSON answer) of a raw POST: for bodies the openai client would not send."""
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def reference_logprobs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].log_softmax(-1)  # (T, V)


def test_echo_with_max_tokens_0_scores_the_prompt_like_transformers(client, reference):
    ids = [464, 3797, 3332, 319, 262, 2603, 13]  # "The cat sat on the mat."
    lp = reference_logprobs(reference, ids)
    expected = [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    for prompt in (ids, "The cat sat on the mat."):
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
        c = r.choices[0]
        assert c.text == "The cat sat on the mat." and r.usage.completion_tokens == 0 and r.usage.prompt_tokens == 7
        assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
        assert c.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
        assert len(c.logprobs.tokens) == len(ids)
        for i in range(1, len(ids)):  # the top alternative and the prompt's own token, as OpenAI lists them
            top = c.logprobs.top_logprobs[i]
            assert top[c.logprobs.tokens[i]] == pytest.approx(expected[i - 1], abs=1e-4)
            assert max(top.values()) == pytest.approx(lp[i - 1].max().item(), abs=1e-4) and len(top) <= 2
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert [list(t) for t in r.choices[0].logprobs.top_logprobs[1:]] == [[t] for t in r.choices[0].logprobs.tokens[1:]]


def test_top_logprobs_include_the_chosen_token(client, reference, lm_tiny):
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=12, temperature=1.0, seed=4, logprobs=2)
    lp = r.choices[0].logprobs
    first = reference_logprobs(reference, lm_tiny.tokenizer.encode("Hello"))[-1]
    assert max(lp.top_logprobs[0].values()) == pytest.approx(first.max().item(), abs=1e-4)  # the model's own
    grew = 0
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top[token] == pytest.approx(value, abs=1e-6)
        assert len(top) in (2, 3)
        grew += len(top) == 3
    # A random tiny model is nearly uniform: a sampled token is rarely among the top 2, so some lists have 3.
    assert grew > 0


def test_logit_bias_forces_and_bans_tokens(client, reference, lm_tiny):
    forced = lm_tiny.tokenizer.encode(" the")[0]
    for temperature in (0.0, 1.0):
        r = client.completions.create(
            model="tiny", prompt="A", max_tokens=6, temperature=temperature, seed=1, logit_bias={str(forced): 100}
        )
        assert r.choices[0].text == " the" * 6
    # top_k's fast path ranks the candidates after the bias: the forced token is brought in from anywhere
    r = client.completions.create(
        model="tiny", prompt="A", max_tokens=4, seed=2, extra_body={"top_k": 5}, logit_bias={str(forced): 100}
    )
    assert r.choices[0].text == " the" * 4
    # -100 on the greedy choice: the runner-up, by transformers' logits, comes first instead
    best, second = reference_logprobs(reference, lm_tiny.tokenizer.encode("A"))[-1].topk(2).indices.tolist()
    plain = client.completions.create(model="tiny", prompt="A", max_tokens=1, temperature=0, logprobs=0)
    banned = client.completions.create(
        model="tiny", prompt="A", max_tokens=1, temperature=0, logprobs=0, logit_bias={str(best): -100}
    )
    assert plain.choices[0].logprobs.tokens == [lm_tiny.tokenizer.decode([best])]
    assert banned.choices[0].logprobs.tokens == [lm_tiny.tokenizer.decode([second])]


@pytest.mark.parametrize(
    "bias,message",
    [
        ({"abc": 1}, "logit_bias"),
        ({"50257": 1}, "not a token id"),
        ({"1": 101}, "logit_bias"),
        ({"1": -100.5}, "logit_bias"),
    ],
)
def test_bad_logit_bias_is_400(server, bias, message):
    status, body = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 1, "logit_bias": bias})
    assert status == 400 and message in body["error"]["message"]


def test_best_of_returns_the_n_best_candidates_by_mean_logprob(client):
    """best_of candidates are the samples an n=best_of request with the same seed draws (seeds are per sample)."""
    kwargs = dict(model="tiny", prompt=["One", "Two"], max_tokens=6, seed=7, logprobs=1)
    every = client.completions.create(n=4, **kwargs)
    best = client.completions.create(n=2, best_of=4, **kwargs)

    def mean(c):
        return sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs)

    for p in range(2):
        ranked = sorted(every.choices[4 * p : 4 * p + 4], key=lambda c: -mean(c))[:2]
        assert [c.text for c in best.choices[2 * p : 2 * p + 2]] == [c.text for c in ranked]
    assert [c.index for c in best.choices] == [0, 1, 2, 3]
    assert best.usage.completion_tokens == every.usage.completion_tokens  # every candidate was generated
    unasked = client.completions.create(n=1, best_of=3, model="tiny", prompt="One", max_tokens=6, seed=7)
    assert unasked.choices[0].logprobs is None  # ranked by logprobs nobody asked to see


@pytest.mark.parametrize(
    "body,message",
    [
        ({"n": 3, "best_of": 2}, "best_of (2) must be at least n (3)"),
        ({"best_of": 2, "stream": True}, "best_of cannot be used with stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options is only allowed with stream"),
        ({"echo": 1}, "echo"),  # strict types: the schema says boolean
        ({"n": "2"}, "n"),
        ({"prompt": [-1]}, "prompt"),
        ({"best_of": 17}, "best_of"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"prompt": "Hi \ud800 there", "echo": True}, "prompt: Value error, the text holds '\\ud800' at character 3"),
        ({"stop": ["ok", "\udc00"]}, "stop.1: Value error, the text holds"),
        ({"prompt": 5}, "prompt: Input should be a valid string"),  # the field, not pydantic's union tag prompt.str
        ({"repetition_penalty": 1e-300}, "repetition_penalty: Input should be greater than or equal to 0.0001"),
    ],
)
def test_bad_completion_requests_are_400_with_a_clear_message(server, body, message):
    status, answer = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 1, **body})
    assert status == 400 and message in answer["error"]["message"], answer
    if ": " in message:  # pydantic's complaints name the field as the client spelled it
        assert answer["error"]["param"] == message.split(":")[0]


def test_a_body_that_is_not_a_json_object_says_so(server):
    for data, message in (
        (b'{"prompt": "Hi",}', "the body is not valid JSON (at character 16)"),
        (b'"Hi"', "the body must be a JSON object"),
    ):
        req = urllib.request.Request(
            server + "/v1/completions", data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        answer = json.load(e.value)
        assert e.value.code == 400 and answer["error"]["message"].startswith(message), answer
        assert answer["error"]["param"] is None


def test_a_chat_message_with_half_a_surrogate_pair_is_400(server):
    status, answer = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud83d"}]})
    assert status == 400 and answer["error"]["param"] == "messages.0.content", answer


def test_retrieve_model(client):
    assert client.models.retrieve("tiny").id == "tiny" and client.models.retrieve("tiny").max_model_len == 64
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_max_tokens_past_the_context_is_honoured(client):
    """The window slides on past n_ctx (64 here), so 100 new tokens are 100, not cut to the context."""
    r = client.completions.create(model="tiny", prompt="x", max_tokens=100, temperature=0, logit_bias={"50256": -100})
    assert r.usage.completion_tokens == 100 and r.choices[0].finish_reason == "length"


def test_a_temperature_too_small_to_divide_by_is_greedy(client):
    greedy = client.completions.create(model="tiny", prompt="The", max_tokens=8, temperature=0).choices[0].text
    for seed in (1, 2):
        tiny = client.completions.create(model="tiny", prompt="The", max_tokens=8, temperature=1e-40, seed=seed)
        assert tiny.choices[0].text == greedy


def test_stream_options_include_usage(client):
    kwargs = dict(model="tiny", prompt=["Once", "Twice"], max_tokens=5, seed=3, n=2)
    plain = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    for i, choice in enumerate(plain.choices):
        assert "".join(x.text for c in chunks for x in c.choices if x.index == i) == choice.text
    quiet = list(client.completions.create(stream=True, **kwargs))
    assert all(c.usage is None and c.choices for c in quiet)


def rendered(hf_tokenizer, template: str, messages) -> str:
    """transformers' own rendering of a chat template: the reference for the server's."""
    return hf_tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Name a colour."},
]


def test_chat_completions_with_the_default_template(client, hf_tokenizer):
    from gpt2kit.paths import CHAT_TEMPLATE

    prompt = rendered(hf_tokenizer, CHAT_TEMPLATE.read_text(), CONVERSATION)
    assert prompt.endswith("User: Name a colour.\n\nAssistant:") and prompt.startswith("System: You are terse.\n\n")
    as_text = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, seed=5, stop=DEFAULT_STOPS)
    chat = client.chat.completions.create(
        model="tiny", messages=CONVERSATION, max_tokens=10, seed=5, logprobs=True, top_logprobs=2
    )
    c = chat.choices[0]
    assert chat.object == "chat.completion" and c.message.role == "assistant"
    assert c.message.content == as_text.choices[0].text and c.finish_reason == as_text.choices[0].finish_reason
    assert chat.usage.model_dump() == as_text.usage.model_dump()
    assert "".join(t.token for t in c.logprobs.content) == c.message.content
    assert all(
        len(t.top_logprobs) == 2 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        for t in c.logprobs.content
        if "\ufffd" not in t.token
    )
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=CONVERSATION,
            max_tokens=10,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(x.delta.content or "" for c in chunks for x in c.choices) == c.message.content
    assert [x.finish_reason for ch in chunks for x in ch.choices if x.finish_reason] == [c.finish_reason]
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


CHATML = (
    "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system messages here') }}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_completions_with_a_custom_template_and_stop(hf_tiny, hf_tokenizer, lm_tiny, tmp_path):
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    proc, url = start_server(hf_tiny, "--dtype", "float32", "--chat-template", template, "--chat-stop", " the")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "A colour?"}]  # ChatML's markers are many tokens to GPT-2
        prompt = rendered(hf_tokenizer, CHATML, messages)
        as_text = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, seed=9, stop=[" the"])
        chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, seed=9)
        assert chat.choices[0].message.content == as_text.choices[0].text
        # the turn marker ends the reply: " the", made certain by a bias, is never shown
        the = lm_tiny.tokenizer.encode(" the")[0]
        stopped = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=8, logit_bias={str(the): 100}
        )
        assert stopped.choices[0].message.content == "" and stopped.choices[0].finish_reason == "stop"
        with pytest.raises(openai.BadRequestError, match="no system messages here"):
            client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": "x"}], max_tokens=1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_bad_chat_template_stops_serve_with_one_line(hf_tiny, tmp_path):
    bad = tmp_path / "bad.jinja"
    bad.write_text("{% for m in messages %}")
    for template in (bad, tmp_path / "missing.jinja"):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpt2kit",
                "serve",
                "--model",
                str(hf_tiny),
                "--port",
                str(free_port()),
                "--chat-template",
                str(template),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr and "chat template" in r.stderr


@pytest.mark.parametrize(
    "body,message",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "text only"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
        ({"model": "gpt-4"}, "does not exist"),
    ],
)
def test_bad_chat_requests_are_refused_with_a_clear_message(server, body, message):
    status, answer = post(
        server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **body}
    )
    assert status in (400, 404) and message in answer["error"]["message"]


def test_chat_text_parts_are_joined(client):
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]
    a = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": parts}], max_tokens=4, seed=1
    )
    b = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4, seed=1
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_tokenize_and_detokenize_equal_the_tokenizer(server, hf_tokenizer):
    text = "Héllo wörld!  Tabs\tand 🙂 emoji, 中文, and\r\nCRLF"
    status, body = post(server, "/tokenize", {"prompt": text, "model": "tiny"})
    assert status == 200 and body == {
        "tokens": hf_tokenizer.encode(text),
        "count": len(hf_tokenizer.encode(text)),
        "max_model_len": 64,
    }
    status, back = post(server, "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and back == {"prompt": text}
    ids = hf_tokenizer.encode("🙂")[:1]  # part of a character
    assert post(server, "/detokenize", {"tokens": ids})[1]["prompt"] == hf_tokenizer.decode(ids)
    for path, bad in (
        ("/tokenize", {}),
        ("/tokenize", {"prompt": 3}),
        ("/detokenize", {"tokens": [50257]}),
        ("/detokenize", {"tokens": [-1]}),
        ("/detokenize", {"tokens": "1 2"}),
        ("/tokenize", {"prompt": "x", "model": "other"}),
    ):
        status, answer = post(server, path, bad)
        assert status in (400, 404) and answer["error"]["message"], (path, bad)


def metrics(url) -> dict:
    """Every sample of /metrics, parsed by Prometheus' own client library: {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_parse_as_prometheus_text_and_move(server, client):
    ok = ("gpt2kit_requests_total", (("outcome", "ok"), ("route", "/v1/completions")))
    bad = ("gpt2kit_requests_total", (("outcome", "bad_request"), ("route", "/v1/chat/completions")))
    before = metrics(server)
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Count me", max_tokens=6, seed=1, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    post(server, "/v1/chat/completions", {"messages": []})
    after = metrics(server)

    def moved(name, labels=(("model", "tiny"),)):  # each model's figures carry its id
        return after[(name, labels)] - before.get((name, labels), 0)

    tiny = (("model", "tiny"),)
    assert moved(*ok) == 1 and moved(*bad) == 1
    assert moved("gpt2kit_prompt_tokens_total") == usage.prompt_tokens
    assert moved("gpt2kit_generation_tokens_total") == usage.completion_tokens
    assert moved("gpt2kit_engine_requests_total") == 1
    assert moved("gpt2kit_time_to_first_token_seconds_count") == 1
    assert moved("gpt2kit_time_per_output_token_seconds_count") >= 1
    assert (
        after[("gpt2kit_time_to_first_token_seconds_bucket", (("le", "+Inf"), *tiny))]
        == after[("gpt2kit_time_to_first_token_seconds_count", tiny)]
    )
    for name in (
        "gpt2kit_queue_depth",
        "gpt2kit_running_rows",
        "gpt2kit_cancelled_rows_total",
        "gpt2kit_batches_total",
    ):
        assert (name, tiny) in after
