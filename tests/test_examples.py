"""Every command example in README.md and docs/ runs, as written, against the bundled model, in a fresh folder.

Each bash or python block in those pages carries a marker, an HTML comment on the line before it (invisible on
GitHub and in the site):

    <!-- run -->             run it: bash blocks with `bash -e`, python blocks with `python`, in the page's
                             folder, in page order, so later blocks use what earlier ones made
    <!-- run: server -->     a block holding one `gpt2kit serve`: started in the background for the blocks after
                             it, stopped (SIGTERM) when the page ends; port 8000 is a free port everywhere on the page
    <!-- run elsewhere: PAGE -->   the same commands run on PAGE (README.md or a path under docs/), checked
    <!-- not run: WHY -->    not run, and the marker says why (a download, a GPU, another program)

A block without a marker fails test_every_example_is_marked, so no example goes untested by accident.

Rewrites keep the run short without changing a flag (shorten): step counts become at most 3, a hundredth of
what is written rounded up (`--steps`, `--save-every`, `--warmup-steps`, Python's `steps=`, and the
`step-NNNNNN` folders they name, all by the same rule; `--sample-every` and `--val-every` stay as written, so
samples are not drawn and validation runs at the last step only); lengths are capped
(`--length`, `--sample-length` and Python's `length=` at 16 tokens, `--nsamples` at 2).

`gpt2kit` in a bash block is the real command line, `gpt2kit.cli.main(argv)` with the block's own arguments,
standard streams, folder and environment, in a process forked from one that has imported PyTorch already
(zygote): each command then costs its own work and not PyTorch's import, which would otherwise be most of this
test's time. Servers, torchrun and python blocks start their own interpreters. OpenMP's threads wait
passively (OMP_WAIT_POLICY=PASSIVE), which changes no result and most of the CPU time.

Each page's folder starts with stand-ins for the reader's own files (_write_stand_ins): posts/ (markdown posts:
this site's guides), notes.txt, README.md, titles.csv, tolkien.txt, hemingway.txt, held_out.txt, old_notes.txt
(cp1252), prompts.txt, and checkpoint/run1 (a short gpt2kit run, made once). The checkpoints guide gets a
gpt-2-simple run written by real TensorFlow (tests/fixtures) as its checkpoint/run1 instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FIXTURES = Path(__file__).parent / "fixtures"
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py", "python3"}
MARKER = re.compile(r"^<!--\s*(run|run:\s*server|run elsewhere:\s*(?P<where>\S+)|not run:\s*(?P<why>.*?))\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
BLOCK_TIMEOUT = 600
MOST_STEPS = 3
CPU_LOG_NAME = "cpu.log"  # the zygote's commands' CPU seconds, one line each


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # "run", "server", "run elsewhere", "not run", or None (unmarked)
    why: str = ""  # why it is not run, or the page that runs it

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the line before it (blank lines skipped)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.group("fence"), opening.group("lang").lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence)), len(lines))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARKER.match(before)
        marker, why = None, ""
        if mark:
            kind = mark.group(1)
            marker = next(m for m in ("not run", "run elsewhere", "run: server", "run") if kind.startswith(m))
            marker = "server" if marker == "run: server" else marker
            why = (mark.group("why") or mark.group("where") or "").strip()
        found.append(Block(page, i + 1, lang, "\n".join(lines[i + 1 : end]), marker, why))
        i = end + 1
    return found


def command_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in COMMAND_LANGUAGES]


# --- the rewrites that keep CI short --------------------------------------------------------------------------


def fewer_steps(n: int) -> int:
    """One rule for every step number, so `--save-every 100` of `--steps 200` still saves `step-000100`'s step."""
    return min(MOST_STEPS, max(1, math.ceil(n / 100)))


def shorten(text: str, lang: str) -> str:
    """Fewer steps and shorter samples; every flag stays as written."""
    steps = r"(--(?:steps|save-every|warmup-steps)[\s=]+)(\d+)"
    text = re.sub(steps, lambda m: m.group(1) + str(fewer_steps(int(m.group(2)))), text)
    text = re.sub(r"\bstep-(\d{6})\b", lambda m: f"step-{fewer_steps(int(m.group(1))):06d}", text)
    text = re.sub(
        r"(--(?:length|sample-length)[\s=]+)(\d+)", lambda m: m.group(1) + str(min(int(m.group(2)), 16)), text
    )
    text = re.sub(r"(--nsamples[\s=]+)(\d+)", lambda m: m.group(1) + str(min(int(m.group(2)), 2)), text)
    if lang.startswith("py"):
        text = re.sub(r"\bsteps=(\d+)", lambda m: f"steps={fewer_steps(int(m.group(1)))}", text)
        text = re.sub(r"\blength=(\d+)", lambda m: f"length={min(int(m.group(1)), 16)}", text)
    return text


def test_shorten_keeps_flags_and_shrinks_numbers():
    before = "gpt2kit finetune --steps 200 --save-every 100 --run-name x"
    assert shorten(before, "bash") == "gpt2kit finetune --steps 2 --save-every 1 --run-name x"
    before = "--model m --checkpoint step-000100 --length 100 --nsamples 10 --steps 2000"
    assert shorten(before, "bash") == "--model m --checkpoint step-000001 --length 16 --nsamples 2 --steps 3"
    before = "finetune(steps=500); generate(length=50, max_tokens=40)"
    assert shorten(before, "python") == "finetune(steps=3); generate(length=16, max_tokens=40)"


# --- the stand-ins for the reader's files ---------------------------------------------------------------------

TITLES = [
    ("askscience", "Why is the sky blue?"),
    ("askscience", "How do bees find their way home?"),
    ("askscience", "Why does ice float on water?"),
    ("askscience", "What makes thunder so loud?"),
    ("legaladvice", "My landlord kept my security deposit, what can I do?"),
    ("legaladvice", "Can my employer read my personal email?"),
    ("legaladvice", "Neighbour's tree fell on my fence, who pays?"),
    ("legaladvice", "Is a verbal agreement binding?"),
    ("AskHistorians", "How did Romans heat their baths?"),
    ("AskHistorians", "What did medieval peasants eat for breakfast?"),
]


def _write_stand_ins(folder: Path) -> None:
    posts = folder / "posts"
    posts.mkdir(parents=True)
    for guide in sorted((ROOT / "docs" / "guides").glob("*.md")):
        shutil.copy(guide, posts / guide.name)
    notes = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    (folder / "notes.txt").write_text(notes, encoding="utf-8")
    shutil.copy(ROOT / "README.md", folder / "README.md")
    rows = ["subreddit,title"] + [f'{s},"{t}"' for _ in range(6) for s, t in TITLES]
    (folder / "titles.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    shutil.copy(ROOT / "docs" / "guides" / "write.md", folder / "tolkien.txt")
    shutil.copy(ROOT / "docs" / "guides" / "serve.md", folder / "hemingway.txt")
    shutil.copy(ROOT / "src" / "gpt2kit" / "assets" / "heldout.txt", folder / "held_out.txt")
    old = "Caf\u00e9 notes, \u2019quoted\u2019 \u2013 an old file.\n" * 20
    (folder / "old_notes.txt").write_bytes(old.encode("cp1252"))
    (folder / "prompts.txt").write_text("ROMEO.\nAnd the LORD said\n", encoding="utf-8")


@dataclass
class Setting:
    files: Path  # the stand-ins, copied into each page's folder
    env: dict[str, str]  # the examples' environment: `gpt2kit` and `python` as PATH finds them
    plain_env: dict[str, str]  # the same, with the real `gpt2kit` executable (servers)


@pytest.fixture(scope="session")
def setting(tmp_path_factory) -> Setting:
    files = tmp_path_factory.mktemp("example-files")
    bin_dir = tmp_path_factory.mktemp("example-bin")
    for name in ("python", "python3"):  # `python` in an example is this interpreter, whatever PATH says
        (bin_dir / name).symlink_to(sys.executable)
    plain = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GPT2KIT_OFFLINE": "1",  # the examples marked `run` need no download: prove it
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
        "MPLBACKEND": "Agg",
        # PyTorch's OpenMP threads and the C kernels' (a second OpenMP runtime) spin while they wait, by default,
        # and spin against each other: each command then burns 3-10x the CPU it needs (measured: 0.4 s of CPU
        # for a 16-token generate with passive waiting, 4.5 s without, forked as here). Waiting changes no result.
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    _write_stand_ins(files)
    run1 = "gpt2kit finetune --dataset notes.txt --steps 2 --batch-size 2 --context-length 64 --run-name run1"
    made = subprocess.run(run1.split(), cwd=files, env=plain, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert made.returncode == 0, made.stderr
    zygote_dir = tmp_path_factory.mktemp("zygote")
    sock = zygote_dir / "socket"
    log = open(zygote_dir / "log", "w")
    zygote = subprocess.Popen(
        [sys.executable, __file__, "--zygote", str(sock)], env=plain, stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    shim = zygote_dir / "gpt2kit"
    shim.write_text(SHIM.format(python=sys.executable, socket=sock, cpu_log=zygote_dir / CPU_LOG_NAME))
    shim.chmod(0o755)
    deadline = time.time() + 120
    while not sock.exists() and zygote.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert sock.exists(), (zygote_dir / "log").read_text()
    env = {
        **plain,
        "PATH": f"{zygote_dir}{os.pathsep}{plain['PATH']}",
        "GPT2KIT_EXAMPLES_CPU_LOG": str(zygote_dir / CPU_LOG_NAME),
    }
    yield Setting(files, env, plain)
    zygote.kill()
    zygote.wait()
    log.close()


def _page_folder(setting: Setting, page: Path, dest: Path) -> Path:
    shutil.copytree(setting.files, dest, copy_function=os.link)  # hard links: gpt2kit replaces files, never edits
    if page.name == "checkpoints.md":  # "bring your checkpoint": a gpt-2-simple run, as TensorFlow wrote it
        shutil.rmtree(dest / "checkpoint" / "run1")
        shutil.copytree(FIXTURES / "gpt2_simple_run" / "run1", dest / "checkpoint" / "run1")
    return dest


# --- `gpt2kit` without PyTorch's import each time -------------------------------------------------------------

# The `gpt2kit` the bash blocks find first on PATH: hands its arguments, folder, environment and standard
# streams to the zygote, and exits with the command's exit code.
SHIM = """#!{python} -S
import json, os, socket, sys
conn = socket.socket(socket.AF_UNIX)
conn.connect("{socket}")
data = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ), "cpu_log": "{cpu_log}"}}).encode()
socket.send_fds(conn, [len(data).to_bytes(4, "big") + data], [0, 1, 2])
sys.exit(int(conn.recv(16) or b"1"))
"""


def zygote(path: str) -> None:
    """Import what the commands import, then fork a waiter per connection, which forks the command."""
    import matplotlib.figure  # noqa: F401  (training draws loss.png)
    import torch  # noqa: F401

    import gpt2kit.cli  # noqa: F401
    import gpt2kit.data.encode  # noqa: F401
    import gpt2kit.lm  # noqa: F401
    import gpt2kit.training.loop  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(16)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _wait_for_command(conn)
        conn.close()


def _wait_for_command(conn: socket.socket) -> None:
    head, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size, data = int.from_bytes(head[:4], "big"), head[4:]
    while len(data) < size:
        data += conn.recv(size - len(data))
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["gpt2kit", *request["argv"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os._exit(_command(request["argv"]))
    for fd in fds:
        os.close(fd)
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if select.select([conn], [], [], 0.1)[0] and not conn.recv(1):  # the shim was killed: so is the command
            os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(status)
    with open(Path(request["cpu_log"]), "a") as log:  # the command's CPU time, for the test's report
        log.write(f"{usage.ru_utime + usage.ru_stime}\n")
    conn.sendall(str(code if code >= 0 else 128 - code).encode())
    os._exit(0)


def _command(argv: list[str]) -> int:
    """What `python -m gpt2kit ARGV` does, as an exit code."""
    from gpt2kit.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) or e.code is None else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    return code or 0


# --- running a page -------------------------------------------------------------------------------------------


class Server:
    def __init__(self, command: str, folder: Path, env: dict, port: int):
        from live_server import health

        self.log = folder / f"server-{port}.log"
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", "exec " + command], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.time() + 300
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if health(self.url)["status"] == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"`{command}` did not come up:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _serve_command(text: str) -> str:
    commands = [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]
    assert len(commands) == 1 and commands[0].startswith("gpt2kit serve"), (
        f"a `run: server` block holds one `gpt2kit serve` command, not {commands}"
    )
    return commands[0]


def _cpu(env: dict) -> float:
    """CPU seconds of this process's children and of the zygote's commands so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = env.get("GPT2KIT_EXAMPLES_CPU_LOG")
    zygote = sum(map(float, Path(log).read_text().split())) if log and Path(log).is_file() else 0.0
    return usage.ru_utime + usage.ru_stime + zygote


def run_block(block: Block, text: str, folder: Path, env: dict, index: int) -> None:
    if block.lang.startswith("py"):
        script = folder / f"example_{index}.py"
        script.write_text(text + "\n", encoding="utf-8")
        argv = [sys.executable, script.name]
    else:
        script = folder / f"example_{index}.sh"
        script.write_text("set -eo pipefail\n" + text + "\n", encoding="utf-8")
        argv = ["bash", script.name]
    started, cpu = time.time(), _cpu(env)
    done = subprocess.run(
        argv, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL
    )
    took = time.time() - started
    print(f"{block.where}: {took:.1f} s, {_cpu(env) - cpu:.1f} s of CPU")
    if done.returncode != 0:
        pytest.fail(
            f"the example at {block.where} failed (exit {done.returncode}, {took:.0f} s):\n{text}\n"
            f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-5000:]}"
        )


RUN_PAGES = [p for p in PAGES if any(b.marker in ("run", "server") for b in command_blocks(p))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_examples_run(page, setting, tmp_path):
    from live_server import free_port

    folder = _page_folder(setting, page, tmp_path / "work")
    port = str(free_port())
    server = None
    try:
        for index, block in enumerate(command_blocks(page)):
            if block.marker not in ("run", "server"):
                continue
            text = shorten(re.sub(r"(?<=[:\s])8000\b", port, block.text), block.lang)
            if block.marker == "server":
                if server is not None:
                    server.stop()
                server = Server(_serve_command(text), folder, setting.plain_env, int(port))
            else:
                run_block(block, text, folder, setting.env, index)
    finally:
        if server is not None:
            server.stop()


def _commands(text: str) -> list[str]:
    """A block's commands: continuation lines joined, comments and blank lines dropped."""
    lines = (re.sub(r"\s+#(\s.*)?$", "", line) for line in re.sub(r"\\\n\s*", " ", text).splitlines())
    return [" ".join(line.split()) for line in lines if line.strip()]


def _check_runs_elsewhere(block: Block) -> None:
    """`run elsewhere: PAGE`: every command of the block is one that a `run` block of PAGE runs."""
    page = ROOT / block.why
    assert page.is_file(), f"{block.where}: no page {block.why}"
    ran = [b for b in command_blocks(page) if b.marker == "run" and b.lang == block.lang]
    if block.lang.startswith("py"):
        assert any(b.text.strip() == block.text.strip() for b in ran), f"{block.where}: {block.why} runs no such block"
        return
    there = {c for b in ran for c in _commands(b.text)}
    missing = [c for c in _commands(block.text) if c not in there]
    assert not missing, f"{block.where}: {block.why} runs none of {missing}"


def test_every_example_is_marked():
    """A bash or python block says whether it runs; one that does not says why."""
    every = [b for p in PAGES for b in command_blocks(p)]
    unmarked = [b.where for b in every if b.marker is None]
    assert not unmarked, (
        "mark each example `<!-- run -->`, `<!-- run: server -->` or `<!-- not run: why -->` "
        "(tests/test_examples.py): " + ", ".join(unmarked)
    )
    silent = [b.where for b in every if b.marker == "not run" and not b.why]
    assert not silent, "a `not run` marker says why: " + ", ".join(silent)
    for b in every:
        if b.marker == "server":
            _serve_command(b.text)
        if b.marker == "run elsewhere":
            _check_runs_elsewhere(b)
    assert sum(b.marker == "run" for b in every) >= 40


if __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]:
    zygote(sys.argv[2])
