"""Every command example in README.md and docs/ runs, as written, against the bundled model, in a fresh folder.

Each bash or python block in those pages carries a marker, an HTML comment on the line before it (invisible on
GitHub and in the site):

    <!-- run -->             run it: bash blocks with `bash -e`, python blocks with `python`, in the page's
                             folder, in page order, so later blocks use what earlier ones made
    <!-- run: server -->     a block holding one `gpt2kit serve`: started in the background for the blocks after
                             it, stopped (SIGTERM) when the page ends; port 8000 is a free port everywhere on the page
    <!-- not run: WHY -->    not run, and the marker says why (a download, a GPU, another program)

A block without a marker fails test_every_example_is_marked, so no example goes untested by accident.

Two rewrites keep the run short without changing a flag: step counts are divided by 100, rounded up
(`--steps`, `--save-every`, `--sample-every`, `--val-every`, `--warmup-steps`, Python's `steps=`, and the
`step-NNNNNN` folders they name), and lengths are capped (`--length`, `--sample-length` and Python's
`length=` at 16 tokens, `--nsamples` at 2).

Each page's folder starts with stand-ins for the reader's own files (STAND_INS): posts/ (markdown posts: this
site's guides), notes.txt, README.md, titles.csv, tolkien.txt, hemingway.txt, held_out.txt, old_notes.txt
(cp1252), prompts.txt, and checkpoint/run1 (a short gpt2kit run, made once). The checkpoints guide gets a
gpt-2-simple run written by real TensorFlow (tests/fixtures) as its checkpoint/run1 instead.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from live_server import free_port, health

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FIXTURES = Path(__file__).parent / "fixtures"
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console", "python", "py", "python3"}
MARKER = re.compile(r"^<!--\s*(run|run:\s*server|not run:\s*(?P<why>.*?))\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
BLOCK_TIMEOUT = 600


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None  # "run", "server", "not run", or None (unmarked)
    why: str = ""

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
            marker = "not run" if kind.startswith("not run") else "server" if "server" in kind else "run"
            why = (mark.group("why") or "").strip()
        found.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]), marker, why))
        i = end + 1
    return found


def command_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in COMMAND_LANGUAGES]


# --- the rewrites that keep CI short ------------------------------------------------------------------

def _fewer_steps(n: str) -> str:
    return str(max(1, math.ceil(int(n) / 100)))


def shorten(text: str, lang: str) -> str:
    """Divide step counts by 100 and cap lengths; every flag stays as written."""
    text = re.sub(r"(--(?:steps|save-every|sample-every|val-every|warmup-steps)[\s=]+)(\d+)",
                  lambda m: m.group(1) + _fewer_steps(m.group(2)), text)
    text = re.sub(r"\bstep-(\d{6})\b", lambda m: f"step-{int(_fewer_steps(m.group(1))):06d}", text)
    text = re.sub(r"(--(?:length|sample-length)[\s=]+)(\d+)", lambda m: m.group(1) + str(min(int(m.group(2)), 16)), text)
    text = re.sub(r"(--nsamples[\s=]+)(\d+)", lambda m: m.group(1) + str(min(int(m.group(2)), 2)), text)
    if lang.startswith("py"):
        text = re.sub(r"\bsteps=(\d+)", lambda m: "steps=" + _fewer_steps(m.group(1)), text)
        text = re.sub(r"\blength=(\d+)", lambda m: f"length={min(int(m.group(1)), 16)}", text)
    return text


def test_shorten_keeps_flags_and_shrinks_numbers():
    assert shorten("gpt2kit finetune --steps 200 --save-every 100 --run-name x", "bash") == \
        "gpt2kit finetune --steps 2 --save-every 1 --run-name x"
    assert shorten("--model checkpoint/blog --checkpoint step-000100 --length 100 --nsamples 10", "bash") == \
        "--model checkpoint/blog --checkpoint step-000001 --length 16 --nsamples 2"
    assert shorten("finetune(steps=500); generate(length=50, max_tokens=40)", "python") == \
        "finetune(steps=5); generate(length=16, max_tokens=40)"


# --- the stand-ins for the reader's files -------------------------------------------------------------

TITLES = [("askscience", "Why is the sky blue?"), ("askscience", "How do bees find their way home?"),
          ("askscience", "Why does ice float on water?"), ("askscience", "What makes thunder so loud?"),
          ("legaladvice", "My landlord kept my security deposit, what can I do?"),
          ("legaladvice", "Can my employer read my personal email?"),
          ("legaladvice", "Neighbour's tree fell on my fence, who pays?"),
          ("legaladvice", "Is a verbal agreement binding?"), ("AskHistorians", "How did Romans heat their baths?"),
          ("AskHistorians", "What did medieval peasants eat for breakfast?")]


def _write_stand_ins(folder: Path) -> None:
    posts = folder / "posts"
    posts.mkdir(parents=True)
    for guide in sorted((ROOT / "docs" / "guides").glob("*.md")):
        shutil.copy(guide, posts / guide.name)
    (folder / "notes.txt").write_text("\n\n".join(p.read_text(encoding="utf-8") for p in
                                                  sorted((ROOT / "docs").glob("*.md"))), encoding="utf-8")
    shutil.copy(ROOT / "README.md", folder / "README.md")
    rows = ["subreddit,title"] + [f'{s},"{t}"' for _ in range(6) for s, t in TITLES]
    (folder / "titles.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "tolkien.txt").write_text((ROOT / "docs" / "guides" / "write.md").read_text(encoding="utf-8"))
    (folder / "hemingway.txt").write_text((ROOT / "docs" / "guides" / "serve.md").read_text(encoding="utf-8"))
    heldout = ROOT / "src" / "gpt2kit" / "assets" / "heldout.txt"
    shutil.copy(heldout, folder / "held_out.txt")
    (folder / "old_notes.txt").write_bytes("Caf\u00e9 notes \u2019quoted\u2019 \u2013 an old file.\n".encode("cp1252") * 20)
    (folder / "prompts.txt").write_text("ROMEO.\nAnd the LORD said\n", encoding="utf-8")


def _environment(bin_dir: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "GPT2KIT_OFFLINE": "1",  # the examples marked `run` need no download: prove it
            "PYTHONUNBUFFERED": "1", "NO_MKDOCS_2_WARNING": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder of stand-ins (checkpoint/run1 included) and the environment the examples run in."""
    base = tmp_path_factory.mktemp("example-files")
    bin_dir = tmp_path_factory.mktemp("example-bin")
    for name in ("python", "python3"):  # `python` in an example is this interpreter, whatever PATH says
        (bin_dir / name).symlink_to(sys.executable)
    env = _environment(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    _write_stand_ins(base)
    made = subprocess.run([sys.executable, "-m", "gpt2kit", "finetune", "--dataset", "notes.txt", "--steps", "2",
                           "--batch-size", "2", "--context-length", "64", "--run-name", "run1", "--no-progress"],
                          cwd=base, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    assert made.returncode == 0, made.stderr
    return base, env


def _page_folder(stand_ins_dir: Path, page: Path, dest: Path) -> Path:
    shutil.copytree(stand_ins_dir, dest, copy_function=os.link)  # hard links: files are replaced, never rewritten
    if page.name == "checkpoints.md":  # "bring your checkpoint": a gpt-2-simple run, as TensorFlow wrote it
        shutil.rmtree(dest / "checkpoint" / "run1")
        shutil.copytree(FIXTURES / "gpt2_simple_run" / "run1", dest / "checkpoint" / "run1")
    return dest


# --- running a page -----------------------------------------------------------------------------------

class Server:
    def __init__(self, command: str, folder: Path, env: dict, port: int):
        self.log = folder / f"server-{port}.log"
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(["bash", "-c", "exec " + command.strip()], cwd=folder, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and self.proc.poll() is None:
            try:
                if health(self.url)["status"] == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"`{command.strip()}` did not come up:\n{self.log.read_text()}")

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
    assert len(commands) == 1 and commands[0].startswith("gpt2kit serve"), \
        f"a `run: server` block holds one `gpt2kit serve` command, not {commands}"
    return commands[0]


def run_block(block: Block, text: str, folder: Path, env: dict, index: int) -> None:
    if block.lang.startswith("py"):
        script = folder / f"example_{index}.py"
        script.write_text(text + "\n", encoding="utf-8")
        argv = [sys.executable, script.name]
    else:
        script = folder / f"example_{index}.sh"
        script.write_text("set -eo pipefail\n" + text + "\n", encoding="utf-8")
        argv = ["bash", script.name]
    started = time.time()
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        pytest.fail(f"the example at {block.where} failed (exit {done.returncode}, {time.time() - started:.0f} s):\n"
                    f"{text}\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-5000:]}")


RUN_PAGES = [p for p in PAGES if any(b.marker in ("run", "server") for b in command_blocks(p))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUN_PAGES])
def test_examples_run(page, stand_ins, tmp_path):
    base, env = stand_ins
    folder = _page_folder(base, page, tmp_path / "work")
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
                server = Server(_serve_command(text), folder, env, int(port))
            else:
                run_block(block, text, folder, env, index)
    finally:
        if server is not None:
            server.stop()


def test_every_example_is_marked():
    """A bash or python block says whether it runs; one that does not says why."""
    unmarked = [b.where for p in PAGES for b in command_blocks(p) if b.marker is None]
    assert not unmarked, ("mark each example `<!-- run -->`, `<!-- run: server -->` or `<!-- not run: why -->` "
                          "(tests/test_examples.py): " + ", ".join(unmarked))
    silent = [b.where for p in PAGES for b in command_blocks(p) if b.marker == "not run" and not b.why]
    assert not silent, "a `not run` marker says why: " + ", ".join(silent)
    servers = [b for p in PAGES for b in command_blocks(p) if b.marker == "server"]
    for b in servers:
        _serve_command(b.text)
    assert sum(b.marker == "run" for p in PAGES for b in command_blocks(p)) >= 40
