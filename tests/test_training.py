"""Fine-tuning on tiny models: the loss falls, resume is exact, signals save, DDP matches one process."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

import gpt2kit
from gpt2kit.errors import UserError
from gpt2kit.formats import newest_step

TINY = dict(
    from_scratch=True,
    n_layer=2,
    n_embd=32,
    n_head=2,
    n_ctx=32,
    batch_size=4,
    learning_rate=3e-3,
    progress=False,
    print_every=5,
)
TEXT = ("The quick brown fox jumps over the lazy dog. " * 30 + "\n") * 4


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "posts").mkdir()
    for i in range(4):
        (tmp_path / "posts" / f"post{i}.md").write_text(f"# Post {i}\n\n" + TEXT)
    out = tmp_path / "data.tokens"
    gpt2kit.encode_dataset([tmp_path / "posts"], out, progress=False)
    return out


def weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def test_loss_falls_and_checkpoint_is_a_model_folder(corpus, tmp_path):
    final = gpt2kit.finetune(
        dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=30, val_fraction=0.1, val_every=10, **TINY
    )
    rows = (tmp_path / "ck" / "run1" / "metrics.csv").read_text().splitlines()
    losses = [float(r.split(",")[2]) for r in rows[1:] if r.split(",")[2]]
    assert losses[-1] < losses[0] - 1.0
    assert (tmp_path / "ck" / "run1" / "loss.png").stat().st_size > 1000
    # every checkpoint is a complete model folder that transformers opens
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel.from_pretrained(final).eval()
    lm = gpt2kit.load(tmp_path / "ck" / "run1", device="cpu", dtype="float32")
    idx = torch.randint(0, 50257, (1, 10))
    with torch.no_grad():
        assert (ref(idx).logits - lm.model(idx)).abs().max() < 1e-4


def test_resume_is_exact_with_dropout_and_noise(corpus, tmp_path):
    opts = dict(TINY, dropout=0.1, noise=0.05, lr_schedule="constant", save_every=1000)
    straight = gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "a", steps=12, **opts)
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "b", steps=5, **opts)
    resumed = gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "b", steps=12, **opts)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_saves_and_the_same_command_resumes_exactly(corpus, tmp_path):
    args = [
        "finetune",
        "--dataset",
        corpus,
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
        "60",
        "--print-every",
        "1",
        "--no-progress",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "5",
        "--dropout",
        "0.1",
        "--save-every",
        "1000",
    ]
    ref = run_cli(*args, "--checkpoint-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    env = {**os.environ, "GPT2KIT_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2kit", *map(str, args), "--checkpoint-dir", str(tmp_path / "int")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = tmp_path / "int" / "run1" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) > 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted: saved" in err
    saved = sorted((tmp_path / "int" / "run1").glob("step-*"))
    assert len(saved) == 1 and saved[0].name != "step-000060"
    again = run_cli(*args, "--checkpoint-dir", tmp_path / "int")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    a, b = weights(tmp_path / "ref/run1/step-000060"), weights(tmp_path / "int/run1/step-000060")
    assert all(torch.equal(a[k], b[k]) for k in a)


def close(a: dict, b: dict, dtype: str) -> bool:
    """Two runs' weights, equal up to the rounding of the precision they trained in.

    fp32: every weight within 1e-5. bf16: the difference as a whole within bf16's epsilon (2^-7) of the
    weights' norm. No per-weight bound holds in bf16: the attention's key biases have a true gradient
    of zero (softmax ignores a constant added to every key), so in bf16 Adam turns their rounding noise
    into steps of the full learning rate, different in each run and harmless to the model.
    """
    if dtype == "float32":
        return all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()
    return bool(diff <= torch.finfo(torch.bfloat16).eps * sum((a[k] ** 2).sum() for k in a).sqrt())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ddp_two_processes_match_one_with_the_same_global_batch(corpus, tmp_path, dtype):
    common = [
        "--dataset",
        str(corpus),
        "--from-scratch",
        "--n-layer",
        "2",
        "--n-embd",
        "32",
        "--n-head",
        "2",
        "--n-ctx",
        "32",
        "--steps",
        "6",
        "--no-progress",
        "--device",
        "cpu",
        "--learning-rate",
        "0.003",
        "--dtype",
        dtype,
    ]
    one = run_cli("finetune", *common, "--batch-size", "4", "--checkpoint-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "GPT2KIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    port = {"float32": "29533", "bfloat16": "29534"}[dtype]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            "-m",
            "gpt2kit",
            "finetune",
            *common,
            "--batch-size",
            "2",
            "--checkpoint-dir",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = weights(tmp_path / "one/run1/step-000006"), weights(tmp_path / "two/run1/step-000006")
    assert close(a, b, dtype)
    # and it is not trivially equal: a different global batch gives different weights
    other = run_cli("finetune", *common, "--batch-size", "2", "--checkpoint-dir", tmp_path / "other")
    assert other.returncode == 0, other.stderr
    c = weights(tmp_path / "other/run1/step-000006")
    assert not close(a, c, dtype)


def test_short_dataset_trains_on_shorter_windows(tmp_path):
    (tmp_path / "tiny.txt").write_text("Just a few words here.")
    final = gpt2kit.finetune(
        dataset=[tmp_path / "tiny.txt"], checkpoint_dir=tmp_path / "ck", steps=3, **{**TINY, "n_ctx": 64}
    )
    assert (final / "model.safetensors").is_file()


def test_empty_dataset_refused_before_training(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    r = run_cli(
        "finetune",
        "--dataset",
        tmp_path / "empty.txt",
        "--from-scratch",
        "--checkpoint-dir",
        tmp_path / "ck",
        env={"GPT2KIT_HOME": str(tmp_path / "home")},
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no text" in r.stderr
    assert not (tmp_path / "ck").exists()


def test_existing_run_is_not_overwritten_by_fresh(corpus, tmp_path):
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=2, **TINY)
    with pytest.raises(UserError, match="--overwrite"):
        gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=2, restore_from="fresh", **TINY)


def test_starting_over_an_existing_run_loses_nothing_until_the_new_one_is_ready(corpus, tmp_path):
    """--overwrite deletes the old run only once the new one's inputs are read; a checkpoint from elsewhere
    needs --overwrite too (it once wrote step 2 into a run at step 5, then pruned it as the oldest); a step of
    the run itself cannot be restored over the run's later steps."""
    ck = tmp_path / "ck"
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=ck, steps=5, save_every=1, run_name="rb", **TINY)
    other = gpt2kit.finetune(dataset=corpus, checkpoint_dir=ck, steps=1, run_name="src", **TINY)
    before = sorted(p.name for p in (ck / "rb").iterdir())
    with pytest.raises(UserError, match="does not exist"):  # a typo: the old run must survive it
        gpt2kit.finetune(
            dataset=tmp_path / "nope.tokens",
            checkpoint_dir=ck,
            steps=2,
            run_name="rb",
            restore_from="fresh",
            overwrite=True,
            **TINY,
        )
    with pytest.raises(UserError, match="--overwrite"):
        gpt2kit.finetune(dataset=corpus, checkpoint_dir=ck, steps=2, run_name="rb", restore_from=str(other), **TINY)
    with pytest.raises(UserError, match="new --run-name"):
        gpt2kit.finetune(
            dataset=corpus,
            checkpoint_dir=ck,
            steps=7,
            run_name="rb",
            restore_from=str(sorted((ck / "rb").glob("step-*"))[0]),
            overwrite=True,
            **TINY,
        )
    assert sorted(p.name for p in (ck / "rb").iterdir()) == before
    final = gpt2kit.finetune(
        dataset=corpus, checkpoint_dir=ck, steps=2, run_name="rb", restore_from=str(other), overwrite=True, **TINY
    )
    assert final == ck / "rb" / "step-000002" and final.is_dir() and newest_step(ck / "rb") == final
    with pytest.raises(UserError, match="give --steps above 1"):  # a new run already past --steps: nothing saved
        gpt2kit.finetune(dataset=corpus, checkpoint_dir=ck, steps=1, run_name="new", restore_from=str(other), **TINY)


def test_what_training_writes_or_reads_later_is_checked_before_it_starts(corpus, tmp_path):
    """A sample folder that cannot be made, and validation tokens outside the vocabulary, fail before the
    first step with one line (they once failed at step N with a traceback, and every unsaved step was lost);
    --val-dataset takes text as --dataset does; --epochs must be finite."""
    (tmp_path / "afile").write_text("")
    env = {"GPT2KIT_HOME": str(tmp_path / "home")}
    base = [
        "finetune",
        "--dataset",
        corpus,
        "--checkpoint-dir",
        tmp_path / "ck",
        "--from-scratch",
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "2",
        "--n-ctx",
        "16",
        "--steps",
        "3",
    ]
    from gpt2kit.data.tokens import TokenWriter

    bad_val = tmp_path / "bad.tokens"
    writer = TokenWriter(bad_val, n_vocab=65536)  # ids a 50257-token model has no row for
    writer.write([60000] * 100)
    writer.close()
    for extra, message in (
        (["--sample-every", "1", "--sample-dir", tmp_path / "afile"], "is a file"),
        (["--val-dataset", bad_val, "--val-every", "1"], "token ids up to 60000"),
        (["--epochs", "inf"], "epochs must be a finite number"),
    ):
        r = run_cli(*base, *extra, env=env)
        assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr
    for extra, message in ((["--dtype", "int8"], "int8 is for running a model on a CPU"),):
        r = run_cli(*base, *extra, env=env)
        assert r.returncode == 2 and message in r.stderr, r.stderr
    r = run_cli(*base[:2], corpus, corpus, *base[3:], env=env)
    assert r.returncode == 2 and "one token file" in r.stderr, r.stderr
    from gpt2kit.devices import DTYPES
    from gpt2kit.training.options import TRAIN_DTYPES

    assert set(TRAIN_DTYPES) == {"auto", *DTYPES}  # the torch-free list is devices.DTYPES' names
    (tmp_path / "val.txt").write_text(TEXT)
    r = run_cli(*base, "--val-dataset", tmp_path / "val.txt", "--val-every", "2", env=env)
    assert r.returncode == 0, r.stderr


def test_a_save_killed_midway_never_breaks_the_newest(corpus, tmp_path):
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=3, **TINY)
    run = tmp_path / "ck" / "run1"
    stale = run / ".tmp-step-000004-999"  # what a kill -9 during the next save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    lm = gpt2kit.load(run, device="cpu")
    assert lm.info["checkpoint"] == "step-000003"
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=4, **TINY)
    assert not stale.exists()


def test_samples_and_validation_do_not_disturb_training(corpus, tmp_path):
    opts = dict(TINY, dropout=0.1, steps=8)
    plain = gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "a", **opts)
    busy = gpt2kit.finetune(
        dataset=corpus,
        checkpoint_dir=tmp_path / "b",
        sample_every=3,
        sample_length=8,
        sample_dir=tmp_path / "samples",
        val_dataset=corpus,
        val_every=2,
        **opts,
    )
    a, b = weights(plain), weights(busy)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "samples" / "run1").glob("step-*.txt"))) == 2


def test_freezing(corpus, tmp_path):
    start = gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "base", steps=1, **TINY)
    frozen = gpt2kit.finetune(
        dataset=corpus,
        model=start,
        checkpoint_dir=tmp_path / "f",
        steps=3,
        freeze_layers=1,
        **{k: v for k, v in TINY.items() if k != "from_scratch"},
    )
    a, b = weights(start), weights(frozen)
    assert torch.equal(a["transformer.wte.weight"], b["transformer.wte.weight"])
    assert torch.equal(a["transformer.h.0.mlp.c_fc.weight"], b["transformer.h.0.mlp.c_fc.weight"])
    assert not torch.equal(a["transformer.h.1.mlp.c_fc.weight"], b["transformer.h.1.mlp.c_fc.weight"])


def test_finetune_leaves_the_callers_global_rng_as_it_was(corpus, tmp_path):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=2, dropout=0.1, **TINY)
    assert torch.equal(torch.get_rng_state(), before)


def test_one_rule_for_the_newest_step_in_loading_and_resuming(corpus, tmp_path):
    run = tmp_path / "ck" / "run1"
    gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=3, save_every=1, max_checkpoints=5, **TINY)
    (run / "step-000009").mkdir()  # emptied by hand: no config.json, so never the newest
    (run / ".tmp-step-000010-999").mkdir()  # what a kill -9 mid-save leaves
    shutil.copytree(run / "step-000002", run / ".tmp-step-000010-999", dirs_exist_ok=True)
    assert newest_step(run) == run / "step-000003"  # the step `latest` names
    (run / "latest").unlink()
    assert newest_step(run) == run / "step-000003"  # else the highest-numbered complete step
    assert gpt2kit.load(run, device="cpu").info["checkpoint"] == "step-000003"
    (run / "step-000003" / "training_state.pt").unlink()  # a model, but nothing to resume exactly
    assert gpt2kit.load(run, device="cpu").info["checkpoint"] == "step-000003"
    with pytest.raises(UserError, match="training_state.pt"):
        gpt2kit.finetune(dataset=corpus, checkpoint_dir=tmp_path / "ck", steps=4, **TINY)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_the_fused_head_loss_is_pytorchs_cross_entropy(dtype, tol):
    """training/loss.py against F.cross_entropy(F.linear(...)) and PyTorch's autograd: loss and both gradients."""
    from gpt2kit.training.loss import head_cross_entropy

    g = torch.Generator().manual_seed(0)
    # 300 rows do not divide into the blocks; 1000 classes with one target repeated in a block.
    hidden, weight = torch.randn(3, 100, 48, generator=g), torch.randn(1000, 48, generator=g) * 0.3
    targets = torch.randint(0, 1000, (3, 100), generator=g)
    targets[0, :5] = 7
    results = []
    for fused in (False, True):
        h = hidden.to(dtype).requires_grad_()
        w = weight.to(dtype).requires_grad_()
        if fused:
            loss = head_cross_entropy(h, w, targets)
        else:
            logits = torch.nn.functional.linear(h, w)
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 1000), targets.view(-1))
        (loss * 3).backward()  # a factor from the caller reaches both gradients
        results.append((loss.detach(), h.grad.float(), w.grad.float()))
    for ref, got in zip(*results):
        assert torch.allclose(got, ref, rtol=tol, atol=tol * ref.abs().max().item()), (got - ref).abs().max()
    assert results[1][0].dtype == torch.float32


def test_the_fused_head_loss_skips_a_frozen_heads_gradient():
    from gpt2kit.training.loss import head_cross_entropy

    h = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(50, 8)
    head_cross_entropy(h, w, torch.randint(0, 50, (10,))).backward()
    assert h.grad is not None and w.grad is None


def test_loss_plot_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook or script plotting on its own backend keeps it while a run draws loss.png (a fresh
    process: choosing a backend is process-wide)."""
    script = f"""
import matplotlib
from pathlib import Path
from gpt2kit.training.metrics import append_metrics, plot_losses
matplotlib.use("svg")
run = Path({str(tmp_path)!r})
for step, loss in ((1, 5.0), (2, 4.0)):
    append_metrics(run, {{"step": step, "elapsed_s": step, "loss": loss, "avg_loss": loss, "lr": 1e-3}})
out = plot_losses(run, title="t")
print(matplotlib.get_backend(), out.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n")
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["svg", "True"], r.stdout + r.stderr
