"""Requests/s and tokens/s of `gpt2kit serve` at 1, 4 and 16 concurrent clients (the official openai client).

    python benchmarks/serve.py [--model PATH] [--requests 32] [--max-tokens 64]

Starts the real server on 127.0.0.1 (the bundled model by default), warms it up, then for each
concurrency level runs a fixed number of requests and reports throughput and latency.
"""
import argparse
import concurrent.futures
import json
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default=str(Path(__file__).parent / "serve_results.json"))
    args = p.parse_args()
    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--port", str(port), "--max-queue", "256"]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.2)
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        model = client.models.list().data[0].id

        def one(i):
            t = time.perf_counter()
            r = client.completions.create(model=model, prompt=f"ROMEO. {i}", max_tokens=args.max_tokens,
                                          temperature=1.0, seed=i, extra_body={"top_k": 40})
            return time.perf_counter() - t, r.usage.completion_tokens

        one(0)
        rows = []
        for clients in (1, 4, 16):
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t
            latencies = sorted(r[0] for r in results)
            rows.append({"clients": clients, "requests": args.requests, "requests_per_s": args.requests / wall,
                         "tokens_per_s": sum(r[1] for r in results) / wall,
                         "latency_p50_s": latencies[len(latencies) // 2], "latency_max_s": latencies[-1]})
            print(rows[-1], file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
            "model": args.model or "bundled", "max_tokens": args.max_tokens}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"`gpt2kit serve`, {meta['model']} model, {args.requests} requests of {args.max_tokens} tokens each "
          f"(top-k 40), on {meta['machine']}, {meta['date']}:\n")
    print("| concurrent clients | requests/s | tokens/s | median latency | slowest |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['latency_p50_s']:.2f} s | {r['latency_max_s']:.2f} s |")


if __name__ == "__main__":
    main()
