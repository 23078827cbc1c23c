"""A live `gpt2kit serve` on 127.0.0.1 for the tests that talk to one over a real socket."""

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models, *extra, timeout: float = 180):
    """`gpt2kit serve` with one --model per entry of `models` (one model or a list of them, each a folder
    or ID=FOLDER) and `extra` flags; returns (process, url) once /health says ok."""
    port = free_port()
    models = models if isinstance(models, (list, tuple)) else [models]
    args = [a for m in models for a in ("--model", str(m))]
    # Its output goes to a file: a pipe nobody reads while a test runs could fill and stall the server.
    log = tempfile.NamedTemporaryFile("w", prefix="gpt2kit-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", "serve", *args, "--port", str(port), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.log_path = Path(log.name)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if health(url)["status"] == "ok":
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start: " + server_log(proc))


def server_log(proc, tail: int = 6000) -> str:
    """The last `tail` characters the server printed (its tracebacks, when a test fails)."""
    return proc.log_path.read_text(errors="replace")[-tail:]


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=2) as r:
        return json.load(r)
