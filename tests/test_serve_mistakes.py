"""`gpt2kit serve` mistakes: bad limits, a bad or busy address, a bad chat template.

Each is one line on stderr and exit 2, found before any model loads, and no path ends in an abort
(exit 134: the process leaving while an engine thread is still inside PyTorch, loading its model).
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import run_cli
from live_server import health

from gpt2kit.errors import UserError
from gpt2kit.server import bind, listen

NO_MODEL = "/no/such/model/folder"  # a mistake found first would be reported instead of this one
TIMEOUT = 120  # seconds for a serve that is expected to stop by itself (imports take a few on a busy machine)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The single `gpt2kit: error:` line of a run that exited 2, holding every needle."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("gpt2kit: error: "), r.stderr
    assert "serving" not in r.stdout + r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_a_port_out_of_range_is_one_line_before_the_model_is_looked_at(port):
    one_line_error(
        run_cli("serve", "--model", NO_MODEL, "--port", port, timeout=TIMEOUT),
        f"port must be between 1 and 65535 (or 0: any free port), got {port}",
        "--port",
    )


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--max-queue", "0"),
        ("--max-queue", "-1"),
        ("--max-tokens-limit", "0"),
        ("--max-tokens-limit", "-5"),
        ("--max-request-rows", "0"),
        ("--max-request-bytes", "-1"),
        ("--max-batch", "0"),
    ],
)
def test_limits_below_one_are_refused_before_the_model_is_looked_at(flag, value):
    name = flag.removeprefix("--").replace("-", "_")
    one_line_error(
        run_cli("serve", "--model", NO_MODEL, flag, value, timeout=TIMEOUT),
        f"{name} must be at least 1",
        f"got {value}",
        f"pass {flag} 1 or more",
    )


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound"])
def test_a_port_in_use_is_one_line_before_the_model_is_looked_at(listening):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        if listening:
            held.listen()
        port = held.getsockname()[1]
        r = run_cli("serve", "--model", NO_MODEL, "--port", port, timeout=TIMEOUT)
    one_line_error(r, f"port {port} on 127.0.0.1 is in use", "pass --port N")


@pytest.mark.parametrize("host", ["nosuchhost.invalid", "999.1.1.1"])
def test_a_host_that_cannot_be_listened_on_is_one_line(host):
    one_line_error(
        run_cli("serve", "--model", NO_MODEL, "--host", host, timeout=TIMEOUT),
        f"cannot listen on host {host}",
        "pass --host 127.0.0.1",
    )


def test_a_port_taken_between_bind_and_listen_is_one_line():
    """Another server takes the port between serve's bind and its listen (both sockets SO_REUSEADDR, as
    uvicorn's are): serve's listen, which comes before any engine starts, says so in one line."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        with socket.socket() as rival:
            rival.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            rival.bind(("127.0.0.1", port))
            rival.listen()
            with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use.*--port 0"):
                listen(sock, "127.0.0.1", port)
    finally:
        sock.close()


def test_port_zero_serves_on_a_free_port_and_says_which(hf_tiny, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpt2kit", "serve", "--model", str(hf_tiny), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GPT2KIT_OFFLINE": "1"},
        )
    try:
        deadline = time.time() + TIMEOUT
        while proc.poll() is None and time.time() < deadline and "serving" not in log.read_text():
            time.sleep(0.1)
        found = re.search(r"serving tiny on (http://127\.0\.0\.1:(\d+)) ", log.read_text())
        assert found and int(found[2]) != 0, log.read_text()
        while time.time() < deadline:
            try:
                if health(found[1])["status"] == "ok":
                    break
            except OSError:  # 503 while the model loads
                time.sleep(0.1)
        assert health(found[1])["status"] == "ok"
        with urllib.request.urlopen(found[1] + "/v1/models", timeout=5) as r:
            assert b'"tiny"' in r.read()
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        proc.kill()
        proc.wait()


def _template_mistakes(tmp_path):
    not_utf8 = tmp_path / "latin1.jinja"
    not_utf8.write_bytes("{{ 'caf\xe9' }}".encode("latin-1"))
    bad_jinja = tmp_path / "bad.jinja"
    bad_jinja.write_text("{% for m in messages %}\n{{ m.content }}\n")
    return [
        (tmp_path / "missing.jinja", "does not exist"),
        (tmp_path, "is a folder, not a file"),
        (not_utf8, "is not UTF-8 text (byte 0xe9 at offset 7); save it as UTF-8"),
        (bad_jinja, "is not valid Jinja"),
    ]


def test_chat_template_mistakes_say_which_file_and_what_to_do(hf_tiny, tmp_path):
    for path, what in _template_mistakes(tmp_path):
        r = run_cli("serve", "--model", hf_tiny, "--port", "0", "--chat-template", path, timeout=TIMEOUT)
        line = one_line_error(r, f"the chat template {path} {what}", "--chat-template")
        assert "Errno" not in line and "codec" not in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_an_unreadable_chat_template_says_so(hf_tiny, tmp_path):
    locked = tmp_path / "locked.jinja"
    locked.write_text("{{ messages }}")
    locked.chmod(0)
    try:
        r = run_cli("serve", "--model", hf_tiny, "--port", "0", "--chat-template", locked, timeout=TIMEOUT)
    finally:
        locked.chmod(0o600)
    one_line_error(r, f"cannot read the chat template {locked}: permission denied", "chmod +r")
