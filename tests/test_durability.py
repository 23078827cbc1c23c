"""Saves under faults: fsync order, `finetune` killed with SIGKILL at random moments, a full disk, a
read-only folder.

GPT2KIT_KILL_RUNS (default 20) and GPT2KIT_KILL_SEED (default 17) set how many kills the kill test makes,
and where they land; raise the first for a longer local run.
"""

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gpt2kit
from gpt2kit.config import GPTConfig
from gpt2kit.data.tokens import TokenWriter, read_tokens
from gpt2kit.formats import build_model, newest_step, read_checkpoint
from gpt2kit.model import GPT
from gpt2kit.tokenizer import gpt2_tokenizer
from gpt2kit.training.checkpoint import load_training_state, save_checkpoint
from gpt2kit.training.metrics import truncate_metrics

KILLS = int(os.environ.get("GPT2KIT_KILL_RUNS", "20"))
KILL_SEED = int(os.environ.get("GPT2KIT_KILL_SEED", "17"))
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom. " * 20 + "\n") * 3
# One thread: the runs are tiny, and on a shared machine more threads only wait on each other.
ENV = {**os.environ, "GPT2KIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "text").mkdir()
    for i in range(3):
        (tmp_path / "text" / f"{i}.txt").write_text(f"Part {i}.\n" + TEXT)
    out = tmp_path / "data.tokens"
    gpt2kit.encode_dataset([tmp_path / "text"], out, progress=False)
    return out


def finetune_args(dataset, checkpoint_dir, steps: int, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gpt2kit",
        "finetune",
        "--dataset",
        str(dataset),
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
        str(steps),
        "--print-every",
        "1",
        "--no-progress",
        "--dropout",
        "0.1",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "3",
        "--checkpoint-dir",
        str(checkpoint_dir),
        *extra,
    ]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, env=ENV, timeout=600, stdin=subprocess.DEVNULL, **kwargs
    )


def one_clear_line(proc: subprocess.CompletedProcess) -> str:
    """The error a user sees: exit code 2, one `gpt2kit: error:` line, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("gpt2kit: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def loads_completely(step_folder: Path) -> int:
    """The step folder loads as a model and as a training state; -> its step."""
    ck = read_checkpoint(step_folder)
    build_model(ck.config, ck.state_dict, step_folder)
    state = load_training_state(step_folder)
    assert state is not None and state["step"] == int(step_folder.name[5:])
    return state["step"]


# --- the order of fsync and rename ---------------------------------------------------------------------


class FsyncSpy:
    """Records, in order, every fsync (by the path its descriptor names) and every os.replace.

    A spy on the OS calls, not a mock: the real calls still run and the files really land."""

    def __init__(self, monkeypatch):
        self.events: list[tuple] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            self.events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def check(self) -> int:
        """Every replace: its source (and every file in it) fsynced before, its folder fsynced after."""
        replaces = [(i, e) for i, e in enumerate(self.events) if e[0] == "replace"]
        for i, (_, src, dst) in replaces:
            before = {e[1] for e in self.events[:i] if e[0] == "fsync"}
            after = {e[1] for e in self.events[i + 1 :] if e[0] == "fsync"}
            assert src in before, f"{src} renamed to {dst} without an fsync first"
            if Path(dst).is_dir():
                for f in Path(dst).rglob("*"):
                    assert os.path.join(src, f.relative_to(dst)) in before, f"{f.name} of {dst} not fsynced"
            assert os.path.dirname(dst) in after, f"the folder of {dst} not fsynced after the rename"
        return len(replaces)


def test_every_save_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    config = GPTConfig(n_vocab=50257, n_ctx=16, n_embd=16, n_head=2, n_layer=1)
    model = GPT(config)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("step,loss\n1,2.0\n2,1.5\n")
    spy = FsyncSpy(monkeypatch)
    save_checkpoint(
        tmp_path / "run",
        2,
        config=config,
        model_state=model.state_dict(),
        tokenizer=gpt2_tokenizer(),
        training_state={"step": 2, "optimizer": {"m": torch.ones(3)}},
        max_checkpoints=2,
    )
    writer = TokenWriter(tmp_path / "data.tokens", 50257)
    writer.write([1, 2, 3])
    writer.close()
    truncate_metrics(tmp_path / "run", 1)
    assert spy.check() >= 5  # the step folder, model.safetensors, config.json, `latest`, the dataset, metrics
    assert read_tokens(tmp_path / "data.tokens").tolist() == [1, 2, 3]
    assert loads_completely(tmp_path / "run" / "step-000002") == 2


# --- killed mid-run ------------------------------------------------------------------------------------


class Launch:
    """`gpt2kit finetune` in a subprocess, its stderr read as it comes."""

    def __init__(self, args, run_dir: Path):
        self.run_dir = run_dir
        self.launched, self.startup = time.time(), 0.0
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, stdin=subprocess.DEVNULL
        )
        self.started = threading.Event()  # set-up done: the first step is next
        self.logged_at_start = 0
        self.pointer_at_start = pointer(run_dir)
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            if "starting from" in line or "resuming from" in line:  # metrics.csv is truncated by now
                self.logged_at_start = logged_steps(self.run_dir)
                self.startup = time.time() - self.launched
                self.started.set()
        self.started.set()  # it ended

    def kill_when(self, mode: str, rng: random.Random, run_dir: Path, startup: float) -> bool:
        """SIGKILL at a moment picked by `mode`; False when the run finished first."""
        if mode == "any time":  # start-up, set-up, resume, training, saving alike
            time.sleep(rng.uniform(0, startup * 1.3))
        elif mode == "training":  # in the step or save after this launch's first save, plus up to 50 ms
            self._wait(lambda: self.saved() and logged_steps(run_dir) > self.logged_at_start + 1)
            time.sleep(rng.uniform(0, 0.05))
        else:  # "saving": while the second save of this launch is being written, plus up to 20 ms; if the
            # polling misses every save (a busy machine), at the third step after the first save
            self._wait(
                lambda: (
                    self.saved()
                    and (
                        any(run_dir.glob(f".tmp-step-*-{self.proc.pid}"))
                        or logged_steps(run_dir) > self.logged_at_start + 3
                    )
                )
            )
            time.sleep(rng.uniform(0, 0.02))
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)
        return True

    def saved(self) -> bool:
        """This launch has completed a save (`latest` names a newer step than at its start)."""
        return pointer(self.run_dir) != self.pointer_at_start

    def _wait(self, ready) -> None:
        deadline = time.time() + 120
        while self.proc.poll() is None and time.time() < deadline and not ready():
            time.sleep(0.002)


def pointer(run_dir: Path) -> str:
    try:
        return (run_dir / "latest").read_text()
    except OSError:
        return ""


def logged_steps(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.csv").read_text().count("\n")
    except OSError:
        return 0


def test_finetune_killed_at_random_moments_resumes_to_the_same_weights(corpus, tmp_path):
    steps = 10 + 3 * KILLS  # each kill lets 1 to 3 steps through (2.5 measured), so the run outlasts the kills
    ref = Launch(finetune_args(corpus, tmp_path / "ref", steps, "--save-every", "1000"), tmp_path / "ref" / "run1")
    assert ref.proc.wait(600) == 0, "".join(ref.err)
    args = finetune_args(corpus, tmp_path / "ck", steps, "--save-every", "1", "--max-checkpoints", "2")
    run_dir = tmp_path / "ck" / "run1"
    rng = random.Random(KILL_SEED)
    newest_seen, kills, in_save = 0, 0, 0
    for i in range(KILLS):
        launch = Launch(args, run_dir)
        if not launch.kill_when(("any time", "training", "saving")[i % 3], rng, run_dir, ref.startup):
            assert launch.proc.returncode == 0, "".join(launch.err)
            break
        kills += 1
        in_save += any(run_dir.glob(f".tmp-step-*-{launch.proc.pid}"))  # its own half-written step folder
        newest = newest_step(run_dir) if run_dir.is_dir() else None
        if newest is None:
            assert newest_seen == 0, f"kill {i} lost every checkpoint"
            continue
        step = loads_completely(newest)
        assert step >= newest_seen, f"kill {i}: the newest checkpoint went back from {newest_seen} to {step}"
        newest_seen = step
    final = run(args)
    assert final.returncode == 0, final.stderr
    print(f"{kills} kills, {in_save} of them inside a save; the newest checkpoint reached step {newest_seen}")
    assert kills >= min(KILLS, 10) and in_save >= 1
    a = load_file(tmp_path / "ref" / "run1" / f"step-{steps:06d}" / "model.safetensors")
    b = load_file(run_dir / f"step-{steps:06d}" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "ref" / "run1") == losses(run_dir)  # one row per step, as if never killed


def losses(run_dir: Path) -> list[tuple[str, str]]:
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    return [tuple(r.split(",")[i] for i in (0, 2)) for r in rows]


# --- full disk ------------------------------------------------------------------------------------------


def file_size_limit(nbytes: int):
    """preexec_fn: files the child writes stop at `nbytes` (writes fail with EFBIG; Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def test_a_save_on_a_full_disk_keeps_the_previous_checkpoint(corpus, tmp_path):
    first = run(finetune_args(corpus, tmp_path / "ck", 3))
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "ck" / "run1"
    before = load_file(run_dir / "step-000003" / "model.safetensors")
    # model.safetensors is 6.4 MB; a 1 MB limit fails the next save midway through writing it
    full = run(finetune_args(corpus, tmp_path / "ck", 6), preexec_fn=file_size_limit(1 << 20))
    line = one_clear_line(full)
    assert "no space left" in line and "File too large" in line
    assert "resuming from" in full.stderr  # it got as far as the save
    assert newest_step(run_dir).name == "step-000003" and not list(run_dir.glob(".tmp-*"))
    assert loads_completely(run_dir / "step-000003") == 3
    after = load_file(run_dir / "step-000003" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def mount_namespace_works() -> bool:
    """A private mount namespace (`unshare -Urm`: no root needed where user namespaces are allowed)."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not mount_namespace_works(),
    reason="needs `unshare -Urm` (user and mount namespaces) for a real tmpfs or read-only mount",
)


def in_namespace(script: str, args: list[str]) -> list[str]:
    """`script` (shell, setting up mounts) then `args`, inside a private user and mount namespace."""
    return ["unshare", "-Urm", "sh", "-c", f'{script} && exec "$@"', "sh", *args]


@needs_mounts
@pytest.mark.parametrize("size,says", [("42m", "no space left"), ("30m", "MiB free")])
def test_a_really_full_disk_mid_run_keeps_the_previous_checkpoint(corpus, tmp_path, size, says):
    ck, copy = tmp_path / "ck", tmp_path / "copy"
    ck.mkdir()
    # A step folder is 21.6 MiB (6.2 MiB of weights, 12.5 MiB of Adam moments, 2.9 MiB of vocabulary). On a
    # 42 MiB tmpfs the save at step 2 fits, and the one at step 4 passes the free-space check (it counts
    # only the tensors) and runs out midway; on 30 MiB the check refuses it before writing. The tmpfs
    # goes with its namespace, so the run folder is copied out before it does.
    args = " ".join(finetune_args(corpus, ck, 4, "--save-every", "2"))
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {ck} && {{ {args} 2>{tmp_path}/err; echo $? >{tmp_path}/rc; }}; "
        f"cp -a {ck}/run1 {copy}"
    )
    assert subprocess.run(["unshare", "-Urm", "sh", "-c", script], env=ENV, timeout=600).returncode == 0
    err = (tmp_path / "err").read_text()
    line = one_clear_line(subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()), "", err))
    assert says in line, line
    assert newest_step(copy).name == "step-000002" and not list(copy.glob(".tmp-*"))
    assert loads_completely(copy / "step-000002") == 2


@needs_mounts
def test_a_read_only_checkpoint_folder_fails_before_training(corpus, tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    proc = run(in_namespace(f"mount --bind {ck} {ck} && mount -o remount,ro,bind {ck}", finetune_args(corpus, ck, 3)))
    line = one_clear_line(proc)
    assert str(ck / "run1") in line and "Read-only file system" in line, line
    assert "starting from" not in proc.stderr  # refused before the model was even built


def test_a_checkpoint_folder_under_a_file_fails_before_training(corpus, tmp_path):
    (tmp_path / "ck").write_text("not a folder")
    proc = run(finetune_args(corpus, tmp_path / "ck" / "inner", 3))
    line = one_clear_line(proc)
    assert "is a file, not a folder" in line and "starting from" not in proc.stderr


def test_encoding_onto_a_full_disk_is_one_clear_error(tmp_path):
    (tmp_path / "big.txt").write_text("Some words to encode, again and again. " * 20000)
    proc = run(
        [
            sys.executable,
            "-m",
            "gpt2kit",
            "encode",
            str(tmp_path / "big.txt"),
            "--output",
            str(tmp_path / "big.tokens"),
        ],
        preexec_fn=file_size_limit(64 << 10),
    )
    line = one_clear_line(proc)
    assert "no space left" in line and "big.tokens" in line
    assert not (tmp_path / "big.tokens").exists() and not list(tmp_path.glob("big.tokens*"))
