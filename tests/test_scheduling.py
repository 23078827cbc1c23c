"""Continuous batching in `gpt2kit serve`, against a live server: joins and leaves at any step, limits
checked before work, cancelled rows freed, SIGTERM answering every accepted request."""

import concurrent.futures
import json
import signal
import socket
import threading
import time
import urllib.request

import pytest
import torch

openai = pytest.importorskip("openai")
requests = pytest.importorskip("requests")  # a plain HTTP client for raw server-sent events

from live_server import health, start_server  # noqa: E402


def post(url, body, timeout=120):
    r = requests.post(url + "/v1/completions", json=body, timeout=timeout)
    return r.status_code, r.json()


def stream_events(url, body, on_event=None, on_open=None, timeout=120):
    """Every `data:` line of a streamed completion, parsed ([DONE] as the string)."""
    events = []
    with requests.post(url + "/v1/completions", json={**body, "stream": True}, timeout=timeout, stream=True) as r:
        assert r.status_code == 200, r.text
        if on_open is not None:
            on_open()  # the server accepted the request
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("data: "):
                ev = line[6:] if line == "data: [DONE]" else json.loads(line[6:])
                events.append(ev)
                if on_event is not None:
                    on_event(len(events))
    return events


def wait_for(condition, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def texts_of(events, n):
    out = [""] * n
    for ev in events:
        if isinstance(ev, dict) and ev.get("choices"):
            for c in ev["choices"]:
                out[c["index"]] += c["text"]
    return out


REQUESTS = [  # different prompt lengths, lengths past the tiny model's 64-position context (sliding), n > 1
    {"prompt": "The long one", "max_tokens": 150, "seed": 1, "temperature": 1.0},
    {"prompt": "word " * 40, "max_tokens": 12, "seed": 2, "temperature": 0.9, "top_k": 40},
    {"prompt": "Hi", "max_tokens": 30, "seed": 3, "n": 3, "temperature": 1.0},
    {"prompt": "A penalised one", "max_tokens": 20, "seed": 4, "frequency_penalty": 1.0, "repetition_penalty": 1.3},
    {"prompt": "Greedy", "max_tokens": 25, "temperature": 0},
]


@pytest.mark.parametrize("native", ["1", "0"], ids=["kernels", "pytorch"])
def test_text_does_not_depend_on_what_joins_or_leaves(hf_tiny, lm_tiny, native, monkeypatch):
    """Each request alone, then all at once with each joining at a different step of the first: the same
    text. Alone, the server gives the library's own text for the seed (BatchDecoder, the CLI's path)."""
    monkeypatch.setenv("GPT2KIT_NATIVE", native)
    proc, url = start_server(hf_tiny, "--dtype", "float32")
    try:
        with urllib.request.urlopen(url + "/health") as r:
            assert json.load(r)["status"] == "ok"
        alone = [texts_of(stream_events(url, b), b.get("n", 1)) for b in REQUESTS]
        ref = lm_tiny.generate("Hi", length=30, seed=3, nsamples=3, temperature=1.0, include_prefix=False)
        assert alone[2] == ref
        started = [threading.Event() for _ in REQUESTS]
        results = [None] * len(REQUESTS)

        def run(i):
            # Request i+1 starts once request i has streamed 3 + 2i events: joins at different steps.
            results[i] = texts_of(
                stream_events(url, REQUESTS[i], lambda k: k >= 3 + 2 * i and started[i].set()), REQUESTS[i].get("n", 1)
            )
            started[i].set()

        threads = []
        for i in range(len(REQUESTS)):
            threads.append(threading.Thread(target=run, args=(i,)))
            threads[-1].start()
            started[i].wait(60)
        for t in threads:
            t.join(120)
        assert results == alone
        assert health(url)["running_rows"] == 0 and health(url)["queue_depth"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def busy_server(hf_tiny):
    proc, url = start_server(hf_tiny, "--dtype", "float32", "--max-batch", "8")
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def timed(url, body):
    t = time.perf_counter()
    code, answer = post(url, body)
    assert code == 200, answer
    return time.perf_counter() - t


def test_a_short_request_is_not_held_behind_a_long_one(busy_server):
    """The issue's head-of-line blocking: a short request sent while a long one decodes joins it at the
    next step instead of waiting for its end."""
    url = busy_server
    short = {"prompt": "Quick", "max_tokens": 16, "seed": 9}
    long = {"prompt": "Slow", "max_tokens": 1000, "seed": 8}  # the case: one long row
    timed(url, short)
    alone = min(timed(url, short) for _ in range(3))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(timed, url, long)
        wait_for(lambda: health(url)["running_rows"] >= 1)  # the long request is decoding
        during = min(timed(url, short) for _ in range(3))
        overtook = not running.done()  # the short ones finished while the long one still ran
        long_took = running.result()
    # Waiting for the long request would take the rest of its time; joining it costs a share of its steps.
    # (The machine's load moves both timings; the long request's own time bounds what waiting would cost.)
    assert overtook, (alone, during, long_took)
    assert during < max(2 * alone, 0.1 * long_took), (alone, during, long_took)


def test_requests_over_the_limits_are_refused_before_any_work(hf_tiny):
    proc, url = start_server(
        hf_tiny, "--dtype", "float32", "--max-batch-tokens", "40", "--max-queue", "1", "--max-batch", "1"
    )
    try:
        before = health(url)
        code, answer = post(url, {"prompt": "x", "max_tokens": 100})  # needs 64 positions; the budget is 40
        assert code == 400 and "--max-batch-tokens" in answer["error"]["message"]
        after = health(url)
        assert (after["batches"], after["requests"]) == (before["batches"], before["requests"])
        first = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            # 16 rows that fit the budget one at a time: the running request, then one queued, then 429
            running = pool.submit(stream_events, url, {"prompt": "x", "max_tokens": 38, "n": 16}, lambda k: first.set())
            assert first.wait(60)
            queued = pool.submit(post, url, {"prompt": "y", "max_tokens": 5})
            wait_for(lambda: health(url)["queue_depth"] >= 1)  # the 16-row request runs, "y" waits
            code, answer = post(url, {"prompt": "z", "max_tokens": 5})
            assert code == 429 and "queue is full" in answer["error"]["message"]
            assert queued.result()[0] == 200 and running.result()[-1] == "[DONE]"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_non_streaming_client_that_leaves_frees_its_rows(busy_server):
    url = busy_server
    before = health(url)["cancelled_rows"]
    body = json.dumps({"prompt": ["Long"] * 2, "n": 12, "max_tokens": 1000}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        wait_for(lambda: health(url)["running_rows"] > 0)
    wait_for(lambda: health(url)["running_rows"] == 0)
    h = health(url)
    assert h["running_rows"] == 0 and h["queue_depth"] == 0
    assert h["cancelled_rows"] == before + 24  # every row: the 8 running and the 16 still waiting
    assert post(url, {"prompt": "after", "max_tokens": 3})[0] == 200


@pytest.fixture(scope="module")
def long_context(tmp_path_factory):
    """A small random GPT-2 with a 1024-token context: rows that can run long enough to outlast a shutdown."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("long") / "long"
    GPT2LMHeadModel(GPT2Config(n_positions=1024, n_embd=128, n_layer=4, n_head=4)).save_pretrained(folder)
    return folder


def test_sigterm_answers_every_accepted_stream_and_exits_0(long_context):
    # The long ones ask for ~1000 tokens each (never <|endoftext|>): seconds of decoding, past the 1 s the
    # server gives them; the short ones need a few steps.
    proc, url = start_server(long_context, "--dtype", "float32", "--max-batch", "7", "--shutdown-timeout", "1")
    bodies = [{"prompt": f"Short {i}", "max_tokens": 5, "seed": i} for i in range(3)] + [
        {"prompt": f"Long {i}", "max_tokens": 1000, "n": 2, "seed": i, "logit_bias": {"50256": -100}} for i in range(4)
    ]
    started, opened = threading.Semaphore(0), threading.Semaphore(0)
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        # 7 rows fill the batch; the last two requests (4 rows) wait for room
        futures = [pool.submit(stream_events, url, b, lambda k: k == 1 and started.release()) for b in bodies[:5]]
        for _ in range(5):
            assert started.acquire(timeout=60)
        futures += [pool.submit(stream_events, url, b, on_open=opened.release) for b in bodies[5:]]
        for _ in range(2):
            assert opened.acquire(timeout=60)
        proc.send_signal(signal.SIGTERM)
        outcomes = [f.result(timeout=90) for f in futures]
    assert proc.wait(timeout=60) == 0
    complete = errors = 0
    for body, events in zip(bodies, outcomes):
        assert events[-1] == "[DONE]"  # every stream ends properly...
        finished = {c["index"] for ev in events[:-1] if ev.get("choices") for c in ev["choices"] if c["finish_reason"]}
        error = any("error" in ev for ev in events[:-1])
        errors += error
        complete += finished == set(range(body.get("n", 1)))
        assert error or finished == set(range(body.get("n", 1))), events[-3:]  # ...complete, or with an error event
    summary = "; ".join(f"{b['prompt']}: {len(ev)} events, {str(ev[-2])[-160:]}" for b, ev in zip(bodies, outcomes))
    assert errors >= 1 and complete >= 1, (
        summary
    )  # the last long one waits for another: not done in 1 s; a short one is
    with pytest.raises(requests.ConnectionError):  # and nothing new is accepted
        requests.post(url + "/v1/completions", json={"prompt": "x"}, timeout=5)


def gauges(url):
    """The /metrics gauges of the one served model, by name (Prometheus' text format: `name{model="..."} value`)."""
    with urllib.request.urlopen(url + "/metrics") as r:
        lines = r.read().decode().splitlines()
    return {
        ln.split("{")[0]: float(ln.split()[-1])
        for ln in lines
        if ln.startswith("gpt2kit_") and "model=" in ln and "_bucket" not in ln
    }


def test_the_kv_cache_stays_within_its_budget(hf_tiny):
    """Rows of many lengths at once against a small --max-batch-tokens: the cache the running batch holds
    never exceeds it (rows wait in the queue instead), and every request is answered in full."""
    budget = 160  # positions: 2-5 rows of the tiny model's 64-position context at a time
    proc, url = start_server(hf_tiny, "--dtype", "float32", "--max-batch-tokens", str(budget), "--max-batch", "8")
    bodies = [{"prompt": "word " * (3 + 7 * i % 29), "max_tokens": 5 + 11 * i % 40, "seed": i} for i in range(12)]
    seen, waiting, stop = [], [], threading.Event()

    def watch():
        while not stop.is_set():
            g = gauges(url)
            seen.append(g["gpt2kit_kv_cache_positions"])
            waiting.append(g["gpt2kit_queue_depth"])
            assert g["gpt2kit_kv_cache_budget_positions"] == budget

    try:
        with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as pool:
            watcher = pool.submit(watch)
            answers = list(pool.map(lambda b: post(url, b), bodies))
            stop.set()
            watcher.result()
        assert all(code == 200 and answer["usage"]["completion_tokens"] >= 1 for code, answer in answers), answers
        assert max(seen) > 0 and max(waiting) > 0, (seen, waiting)  # the batch ran, and requests had to wait
        assert max(seen) <= budget, max(seen)
        assert gauges(url)["gpt2kit_kv_cache_positions"] == 0  # nothing runs: the cache's memory went back
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=60)


def test_prompt_scoring_is_interleaved_and_scores_like_transformers(long_context):
    """A big scoring request (echo + logprobs, max_tokens 0: lm-evaluation-harness's loglikelihood) is prefilled
    in chunks like any prompt, interleaved with the others: a short generation request sent while it runs
    finishes long before it instead of waiting for every one of its prompts (the scoring of all of them once
    ran in one step when the request was admitted), and the scores are transformers' (fp32)."""
    from transformers import GPT2LMHeadModel

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 50256, (1000 + i,), generator=g).tolist() for i in range(8)]  # near-full context
    scoring = {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 2}
    proc, url = start_server(long_context, "--dtype", "float32")
    try:
        timed(url, {"prompt": "warm", "max_tokens": 2})
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            start = time.perf_counter()
            big = pool.submit(post, url, scoring)
            # The engine has the scoring request (its prompt tokens are counted when it is submitted)
            wait_for(lambda: gauges(url)["gpt2kit_prompt_tokens_total"] >= sum(map(len, prompts)))
            short = timed(url, {"prompt": "Quick", "max_tokens": 2, "seed": 1})
            overtook = not big.done()
            code, answer = big.result()
            big_took = time.perf_counter() - start
        assert code == 200, answer
        assert overtook and short < big_took / 2, (short, big_took)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    reference = GPT2LMHeadModel.from_pretrained(long_context).eval()
    assert [c["index"] for c in answer["choices"]] == list(range(len(prompts)))
    for ids, choice in zip(prompts, answer["choices"]):
        with torch.no_grad():
            lp = reference(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)  # (T - 1, V)
        expected = lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        got = choice["logprobs"]
        assert (
            got["token_logprobs"][0] is None and got["top_logprobs"][0] is None and choice["finish_reason"] == "length"
        )
        assert got["token_logprobs"][1:] == pytest.approx(expected.tolist(), abs=1e-4)
        # The top 2 and the prompt's own token, keyed by text: random ids can decode alike (a lone UTF-8 byte is
        # '\ufffd') and share a key, so only "none above the model's best" holds at every position.
        best = [max(top.values()) for top in got["top_logprobs"][1:]]
        assert all(b <= m + 1e-4 for b, m in zip(best, lp.max(-1).values.tolist()))
        assert all(len(top) <= 3 for top in got["top_logprobs"][1:])


def test_a_request_whose_numbers_break_down_fails_alone(hf_tiny, tmp_path):
    """A row whose logits hold NaN (here a position embedding broken on purpose, reached only by a long
    prompt) fails its own request with a server error; the request decoding beside it goes on, and its text
    is what it is alone. (It once failed every request in the batch.)"""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(hf_tiny, broken)
    tensors = load_file(broken / "model.safetensors")
    key = next(k for k in tensors if k.endswith("wpe.weight"))
    tensors[key][60:] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    proc, url = start_server(broken, "--dtype", "float32", "--max-batch", "16")
    try:
        good = {"prompt": [464, 3797], "max_tokens": 56, "temperature": 0.8, "seed": 5, "n": 8}  # positions < 60
        alone = texts_of(stream_events(url, good), 8)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(stream_events, url, good)
            wait_for(lambda: health(url)["running_rows"] >= 1)
            code, answer = post(url, {"prompt": [464] * 61, "max_tokens": 2, "n": 2})
            overlapped = not running.done()
            events = running.result()
        assert code == 500 and "NaN" in answer["error"]["message"], answer
        assert overlapped and events[-1] == "[DONE]" and texts_of(events, 8) == alone
        assert post(url, {"prompt": [464] * 4, "max_tokens": 3})[0] == 200  # and the server serves on
    finally:
        proc.terminate()
        proc.wait(timeout=60)
