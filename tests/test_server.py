"""The HTTP API through the official `openai` client against a live server on 127.0.0.1."""

import concurrent.futures
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

openai = pytest.importorskip("openai")

from live_server import free_port, health, start_server  # noqa: E402


@pytest.fixture(scope="module")
def server(hf_tiny):
    proc, url = start_server(hf_tiny, "--max-queue", "200")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused")


def test_models_and_plain_completion(client, lm_tiny):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.completions.create(model="tiny", prompt="Hello there", max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 8 and r.usage.total_tokens == 10
    expected = lm_tiny.generate("Hello there", length=8, temperature=0, include_prefix=False, stop_at_eot=False)[0]
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"


def test_streaming_matches_plain_and_ends_with_done(client, server):
    plain = client.completions.create(model="tiny", prompt="Once", max_tokens=12, seed=3)
    chunks = list(
        client.completions.create(
            model="tiny", prompt="Once", max_tokens=12, seed=3, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage.completion_tokens == 12
    raw = (
        urllib.request.urlopen(
            urllib.request.Request(
                server + "/v1/completions",
                method="POST",
                data=json.dumps({"prompt": "x", "max_tokens": 2, "stream": True}).encode(),
                headers={"Content-Type": "application/json"},
            )
        )
        .read()
        .decode()
    )
    assert raw.rstrip().endswith("data: [DONE]")


def test_ignore_eos_generates_past_endoftext_as_the_library_does(client, lm_tiny):
    """vLLM's and llama.cpp's ignore_eos: <|endoftext|> made near certain, the row still runs to max_tokens,
    token for token what LM.generate writes with stop_at_eot=False under the same seed."""
    eot = {str(lm_tiny.tokenizer.eot_id): 20}
    stopped = client.completions.create(model="tiny", prompt="Once", max_tokens=12, seed=5, logit_bias=eot)
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens < 12
    r = client.completions.create(
        model="tiny", prompt="Once", max_tokens=12, seed=5, logit_bias=eot, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.choices[0].text.startswith(stopped.choices[0].text)  # the same draws up to the <|endoftext|>, then on
    plain = client.completions.create(
        model="tiny", prompt="Once", max_tokens=40, seed=5, extra_body={"ignore_eos": True}
    )
    expected = lm_tiny.generate("Once", length=40, seed=5, include_prefix=False, stop_at_eot=False)[0]
    assert plain.choices[0].text == expected and plain.usage.completion_tokens == 40


def test_logprobs_layout_and_values(client, lm_tiny):
    import torch

    r = client.completions.create(model="tiny", prompt="The cat", max_tokens=3, temperature=0, logprobs=5, echo=True)
    lp = r.choices[0].logprobs
    ids = lm_tiny.tokenizer.encode("The cat")
    assert r.choices[0].text.startswith("The cat")
    assert len(lp.tokens) == len(ids) + 3 and lp.token_logprobs[0] is None
    assert lp.text_offset[len(ids)] == len("The cat")
    with torch.no_grad():
        ref = lm_tiny.model(torch.tensor([ids]))[0, -1].log_softmax(-1)
    first_new = len(ids)
    assert abs(lp.token_logprobs[first_new] - ref.max().item()) < 1e-3  # greedy: the top token
    assert len(lp.top_logprobs[first_new]) == 5
    assert max(lp.top_logprobs[first_new].values()) == pytest.approx(ref.max().item(), abs=1e-3)


def test_a_streamed_echo_carries_the_prompts_logprobs(client):
    """stream + echo + logprobs: the chunk that echoes the prompt carries its tokens' logprobs, so the stream
    adds up to the same logprobs object as the response without stream (OpenAI's legacy completions)."""
    body = dict(
        model="tiny", prompt=["The cat sat", "On a mat"], max_tokens=3, temperature=0, logprobs=2, echo=True, n=2
    )
    whole = {c.index: c for c in client.completions.create(**body).choices}
    got: dict[int, dict] = {}
    for chunk in client.completions.create(**body, stream=True):
        for c in chunk.choices:
            g = got.setdefault(
                c.index, {"text": "", "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
            )
            g["text"] += c.text
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                g[key] += getattr(c.logprobs, key) if c.logprobs else []
    assert sorted(got) == sorted(whole) == [0, 1, 2, 3]
    for i, g in got.items():
        want = whole[i].logprobs
        assert g["text"] == whole[i].text and g["tokens"] == want.tokens and g["text_offset"] == want.text_offset
        assert g["token_logprobs"][0] is None and g["top_logprobs"][0] is None
        assert g["token_logprobs"][1:] == pytest.approx(want.token_logprobs[1:], abs=1e-5)
        assert [sorted(t) for t in g["top_logprobs"][1:]] == [sorted(t) for t in want.top_logprobs[1:]]


def test_list_of_prompts_and_n(client):
    r = client.completions.create(model="tiny", prompt=["One", "Two"], max_tokens=4, n=2, seed=5)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text != r.choices[1].text
    assert r.usage.completion_tokens == 16


def test_stop_and_penalties(client):
    base = client.completions.create(model="tiny", prompt="A", max_tokens=20, temperature=0).choices[0].text
    stop = base.split(" ")[2]
    r = client.completions.create(model="tiny", prompt="A", max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].text == base[: base.index(stop)] and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model="tiny", prompt="A", max_tokens=20, temperature=0, frequency_penalty=2.0)
    assert r.choices[0].text != base


@pytest.mark.parametrize(
    "kwargs,status",
    [
        (dict(model="tiny", prompt="x", temperature=-1), 400),
        (dict(model="tiny", prompt="x", top_p=0), 400),
        (dict(model="tiny", prompt="x", max_tokens=100000), 400),
        (dict(model="tiny", prompt="x", max_tokens=-1), 400),
        (dict(model="tiny", prompt="x", presence_penalty=3), 400),
        (dict(model="tiny", prompt="x", extra_body={"top_k": -1}), 400),
        (dict(model="tiny", prompt="x", temperature=2.5), 400),
        (dict(model="other", prompt="x"), 404),
        (dict(model="tiny", prompt="word " * 100), 400),  # longer than the context: OpenAI's 400
    ],
)
def test_errors_in_openai_shape(client, kwargs, status):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(**kwargs)
    assert e.value.status_code == status
    assert e.value.body["message"]


def test_concurrent_requests_share_forward_passes(client, server):
    def one(i):
        return client.completions.create(model="tiny", prompt=f"Request {i}", max_tokens=48, seed=i, temperature=1.0)

    sequential = [one(i) for i in range(8)]
    before = health(server)["batches"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(one, range(8)))
    batches = health(server)["batches"] - before
    assert [r.choices[0].text for r in together] == [
        r.choices[0].text for r in sequential
    ]  # seeds hold across batching
    # Requests shared forward passes (what it gains in time is benchmarks/serve.py's business: timings
    # in tests are noise on a shared 2-core machine).
    assert batches < 8


def test_a_client_that_leaves_stops_its_generation(client, server):
    before = health(server)["cancelled_rows"]
    stream = client.completions.create(
        model="tiny", prompt="Long", max_tokens=1000, stream=True, logit_bias={"50256": -100}
    )  # no <|endoftext|>: the stream must still run when the client leaves
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.time() + 20
    while time.time() < deadline and health(server)["cancelled_rows"] == before:
        time.sleep(0.1)
    assert health(server)["cancelled_rows"] > before


def test_a_non_streaming_client_that_leaves_stops_its_generation(server):
    before = health(server)["cancelled_rows"]
    # <|endoftext|> barred: a row that ended on its own within the half second would not count as cancelled
    body = json.dumps({"prompt": ["Long"] * 4, "n": 16, "max_tokens": 1000, "logit_bias": {"50256": -100}}).encode()
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:  # the client gives up after 0.5 s and hangs up
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        time.sleep(0.5)
    deadline = time.time() + 20
    # wait for all of them: running rows and waiting ones are counted in different steps of the engine
    while time.time() < deadline and health(server)["cancelled_rows"] < before + 64:
        time.sleep(0.1)
    assert health(server)["cancelled_rows"] >= before + 64  # every row of the request


def test_a_chunked_body_over_the_limit_is_refused(server):
    """No Content-Length to check up front: the body is counted as it arrives."""
    import http.client

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunk = b'{"prompt": "' + b"x" * (1 << 20) + b'", "max_tokens": 1}'
    conn.request(
        "POST",
        "/v1/completions",
        body=iter([chunk[:1000], chunk[1000:]]),
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    r = conn.getresponse()
    assert r.status == 413 and "limit" in json.loads(r.read())["error"]["message"]
    assert health(server)["status"] == "ok"


def test_api_key_required(hf_tiny):
    proc, url = start_server(hf_tiny, "--api-key", "sekret")
    try:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong")
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="tiny", prompt="x", max_tokens=1)
        good = openai.OpenAI(base_url=url + "/v1", api_key="sekret")
        assert good.completions.create(model="tiny", prompt="x", max_tokens=1).usage.completion_tokens == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_queue_full_is_429(hf_tiny):
    proc, url = start_server(hf_tiny, "--max-queue", "1", "--max-batch", "1")
    try:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

        def one(i):
            try:
                c.completions.create(model="tiny", prompt="x", max_tokens=200, seed=i)
                return 200
            except openai.APIStatusError as e:
                return e.status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(8)))
        assert 429 in codes and 200 in codes
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_model_that_cannot_load_stops_the_server_with_one_line(tmp_path):
    """The files exist but are corrupt: the server says why and exits 2 instead of answering 503 forever."""
    (tmp_path / "config.json").write_text('{"n_embd": 4')
    r = subprocess.run(
        [sys.executable, "-m", "gpt2kit", "serve", "--model", str(tmp_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "config.json" in r.stderr.strip().splitlines()[-1]


def test_defaults_come_from_serve_options(server):
    from gpt2kit.options import ServeOptions

    with urllib.request.urlopen(server + "/v1/info") as r:
        info = json.load(r)
    assert info["max_tokens_limit"] == ServeOptions.max_tokens_limit and info["auth"] is False


def test_a_load_bug_keeps_its_exception_for_serve_to_raise():
    """Only a UserError becomes one line; anything else reaches `serve` whole, traceback and all."""
    from gpt2kit.errors import UserError
    from gpt2kit.server.engine import Engine

    def bug():
        return {}["no such key"]

    def mistake():
        raise UserError("config.json is not JSON")

    for loader, kind in ((bug, KeyError), (mistake, UserError)):
        told = []
        engine = Engine(loader, max_batch=1, max_queue=1, on_load_error=told.append)
        engine._thread.join(timeout=30)
        assert isinstance(engine.load_exception, kind) and told == [engine.load_exception]
        assert engine.load_exception.__traceback__ is not None and engine.load_error == str(engine.load_exception)


def test_token_id_prompts_as_lm_evaluation_harness_sends_them(hf_tiny):
    """lm-evaluation-harness's `local-completions` scores a text with token-id prompts, echo, logprobs=1 and
    max_tokens=1: the prompt tokens' logprobs must be the model's, here against transformers in fp32."""
    import torch
    from transformers import GPT2LMHeadModel

    proc, url = start_server(hf_tiny, "--dtype", "float32")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        ids = [464, 3797, 3332, 319, 262, 2603, 13]  # "The cat sat on the mat."
        r = client.completions.create(model="tiny", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
        lp = r.choices[0].logprobs
        assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
        with torch.no_grad():
            ref = GPT2LMHeadModel.from_pretrained(hf_tiny).eval()(torch.tensor([ids])).logits[0].log_softmax(-1)
        expected = [ref[i - 1, ids[i]].item() for i in range(1, len(ids))]
        assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-4)
        assert r.choices[0].text.startswith("The cat sat on the mat.")
        # the same continuation as the text prompt, for one prompt and for a batch of id lists
        text = client.completions.create(model="tiny", prompt="The cat sat on the mat.", max_tokens=6, seed=2)
        batch = client.completions.create(model="tiny", prompt=[ids, ids[:3]], max_tokens=6, seed=2)
        assert batch.choices[0].text == text.choices[0].text and len(batch.choices) == 2
        for bad, status in (([50257], 400), ([[]], 400), ([1] * 64, 400)):  # out of vocabulary, empty, context full
            with pytest.raises(openai.APIStatusError) as e:
                client.completions.create(model="tiny", prompt=bad, max_tokens=1)
            assert e.value.status_code == status
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_request_over_the_row_limit_is_refused_before_any_work(client, server):
    before = health(server)
    with pytest.raises(openai.BadRequestError, match="at most 64 per request"):
        client.completions.create(model="tiny", prompt=["hello"] * 1000, n=16, max_tokens=200)
    after = health(server)  # nothing ran: no batch, no request done
    assert (after["batches"], after["requests"]) == (before["batches"], before["requests"])
    assert (
        client.completions.create(model="tiny", prompt=["hello"] * 4, n=16, max_tokens=1).usage.completion_tokens == 64
    )


# A multiple-choice task for lm-evaluation-harness: (question, choices, answer). Multi-token choices, a
# newline, non-ASCII text and one long context (43 tokens; the model's context is 64).
MC_ITEMS = [
    ("The capital of France is", ["Paris", "London", "a small village near the sea"], 0),
    ("Water freezes at zero degrees", ["Celsius", "Fahrenheit"], 0),
    ("The cat sat on the", ["mat", "moon", "roof of the old red car", "sky"], 0),
    ("Two plus two equals", ["four", "five", "twenty-two"], 0),
    ("The sun rises in the", ["east", "west"], 0),
    ("A week has seven", ["days", "hours", "years and a half"], 0),
    ("Question: What do bees make?\nAnswer:", ["honey", "milk", "bread"], 0),
    ("The opposite of hot is", ["cold", "warm", "loud"], 0),
    ("Snow is usually", ["white", "green", "purple with yellow dots"], 0),
    ("Fish live in", ["water", "trees", "deserts"], 0),
    (
        "In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the",
        ["waters", "land"],
        0,
    ),
    ("Café, naïve, résumé: words with", ["accents", "numbers 1, 2, 3", "emoji 🙂"], 0),
]


def scoring_model(folder):
    """A tiny GPT-2 saved by transformers, with GPT-2's tokenizer files (so both harness back ends read the
    folder offline). Initialised 10x wider than GPT-2's 0.02 so that choices differ by whole nats, and with
    ln_f's bias pointing at <|endoftext|>'s embedding so that after most scored texts the greedy next token
    ends the text: the harness drops the last echoed logprob as the generated token's, so a server that
    left the end of text out of logprobs shifted every such sum by one token."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2kit.paths import ASSETS_DIR

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        toward_eot = torch.randn(32)
        toward_eot *= 2.5 / toward_eot.norm()
        model.transformer.ln_f.bias.copy_(toward_eot)
        model.transformer.wte.weight[50256] = toward_eot  # tied: the output row of <|endoftext|> too
    model.save_pretrained(folder)
    shutil.copy(ASSETS_DIR / "encoder.json", folder / "vocab.json")
    shutil.copy(ASSETS_DIR / "vocab.bpe", folder / "merges.txt")
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": 64,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
    )
    return model


def write_mc_task(folder):
    """lm-evaluation-harness' task YAML and its JSONL data, for --include_path."""
    folder.mkdir()
    with open(folder / "items.jsonl", "w", encoding="utf-8") as f:
        for question, choices, answer in MC_ITEMS:
            f.write(json.dumps({"question": question, "choices": choices, "answer": answer}) + "\n")
    (folder / "gpt2kit_mc.yaml").write_text(f"""task: gpt2kit_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(folder / "items.jsonl"))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")


def lm_eval(tmp_path, name, model_type, model_args, *extra):
    """`lm_eval` itself in a subprocess, offline, on the task of write_mc_task (started, not waited for)."""
    import os

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    with open(tmp_path / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lm_eval",
                "--model",
                model_type,
                "--model_args",
                model_args,
                "--tasks",
                "gpt2kit_mc",
                "--include_path",
                str(tmp_path / "task"),
                "--log_samples",
                "--output_path",
                str(tmp_path / name),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )


def lm_eval_samples(tmp_path, name, proc):
    """Per document: each choice's log-likelihood, and the accuracies, from lm_eval's --log_samples file."""
    assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-4000:]
    (path,) = (tmp_path / name).glob("*/samples_gpt2kit_mc_*.jsonl")
    docs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        docs[d["doc_id"]] = ([float(r[0][0]) for r in d["resps"]], d["acc"], d["acc_norm"])
    return docs


def test_lm_evaluation_harness_scores_a_served_model(tmp_path):
    """The issue's test: `lm_eval --model local-completions` against a live `gpt2kit serve` (fp32) gives the
    same per-sample log-likelihoods (within 1e-4) and the same accuracies as `lm_eval --model hf` on the
    same folder, on a multiple-choice JSONL task written here. Both run offline."""
    import torch
    from transformers import AutoTokenizer

    folder = tmp_path / "tiny"
    model = scoring_model(folder)
    write_mc_task(tmp_path / "task")
    tok = AutoTokenizer.from_pretrained(folder)
    texts = [tok.encode(q) + tok.encode(" " + c) for q, choices, _ in MC_ITEMS for c in choices]
    with torch.no_grad():  # the next token's logprobs after each scored text
        after = [model(torch.tensor([ids])).logits[0, -1].log_softmax(-1) for ids in texts]
    ends = [lp.argmax().item() == 50256 for lp in after]
    assert any(ends) and not all(ends)  # the model ends most scored texts and not all: both ways are checked
    # the reference runs alongside (the machine has 2 cores; each run is mostly lm_eval's start-up)
    hf = lm_eval(tmp_path, "hf", "hf", f"pretrained={folder},dtype=float32", "--device", "cpu", "--batch_size", "4")
    proc, url = start_server(folder, "--dtype", "float32")
    try:
        # max_length is the model's context: the harness keeps one position for the generated token.
        # --batch_size 8: eight token-id prompts per request, as the harness batches them.
        served = lm_eval(
            tmp_path,
            "served",
            "local-completions",
            f"model=tiny,base_url={url}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={folder},max_length=64,num_concurrent=1,max_retries=1",
            "--batch_size",
            "8",
        )
        got = lm_eval_samples(tmp_path, "served", served)
        assert 0 < health(url)["requests"] < len(texts)  # lists of prompts were sent
        # The end of text that stops a row is listed in logprobs (not in the text), streamed or not, as OpenAI's.
        ended, eot_logprob = next((ids, lp[50256].item()) for ids, lp, end in zip(texts, after, ends) if end)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        r = client.completions.create(model="tiny", prompt=ended, max_tokens=1, echo=True, logprobs=1, temperature=0)
        lp = r.choices[0].logprobs
        assert (r.choices[0].text, r.choices[0].finish_reason) == (tok.decode(ended), "stop")
        assert len(lp.tokens) == len(ended) + 1 and lp.tokens[-1] == "<|endoftext|>"
        assert lp.token_logprobs[-1] == pytest.approx(eot_logprob, abs=1e-4)
        chunks = client.completions.create(
            model="tiny", prompt=ended, max_tokens=1, logprobs=1, temperature=0, stream=True
        )
        streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
        assert [x.tokens for x in streamed] == [["<|endoftext|>"]]
        assert streamed[0].token_logprobs[0] == pytest.approx(eot_logprob, abs=1e-4)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    expected = lm_eval_samples(tmp_path, "hf", hf)
    assert sorted(got) == sorted(expected) == list(range(len(MC_ITEMS)))
    for doc, (lls, acc, acc_norm) in expected.items():
        assert got[doc][0] == pytest.approx(lls, abs=1e-4), doc
        assert (got[doc][1], got[doc][2]) == (acc, acc_norm), doc
