"""LoRA: adapters in PEFT's format against peft + transformers, merge, exact resume, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file, save_file

import gpt2kit
from gpt2kit.errors import UserError

peft = pytest.importorskip("peft")
TEXT = ("The quick brown fox jumps over the lazy dog. " * 30 + "\n") * 4
LORA = dict(
    lora_rank=4, lora_alpha=8.0, batch_size=4, context_length=32, learning_rate=3e-3, progress=False, print_every=1
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-data")
    (folder / "text.txt").write_text(TEXT)
    out = folder / "data.tokens"
    gpt2kit.encode_dataset([folder / "text.txt"], out, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(hf_tiny, corpus, tmp_path_factory):
    """A LoRA run on the tiny transformers model: every matrix adapted, 16 steps."""
    ck = tmp_path_factory.mktemp("lora-run")
    final = gpt2kit.finetune(dataset=corpus, model=str(hf_tiny), checkpoint_dir=ck, steps=16, **LORA)
    return ck / "run1", final


def peft_model(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    return PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), adapter).eval()


def logits(model, idx) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out


IDX = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))


def test_loss_falls_and_only_the_adapter_trains(trained):
    run, final = trained
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(r[2]) for r in rows if r[2]]
    assert losses[-1] < losses[0] - 0.3
    assert not (final / "model.safetensors").exists()  # the step folder is an adapter, not a model
    tensors = load_file(final / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * 4 and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in tensors)
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in tensors
    assert all(t.abs().max() > 0 for t in tensors.values())  # B moved off zero
    state = torch.load(final / "training_state.pt", weights_only=False)
    moments = state["optimizer"]["state"]
    assert len(moments) == len(tensors)  # the optimizer updated the adapter's tensors and nothing else
    shapes = sorted(tuple(m["exp_avg"].shape) for m in moments.values())
    assert shapes == sorted(tuple(t.shape) for t in tensors.values())
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["r"] == 4 and config["peft_type"] == "LORA"


def test_gpt2kit_adapter_in_peft_gives_the_same_logits(hf_tiny, trained):
    run, final = trained
    ref = logits(peft_model(hf_tiny, final), IDX)
    base = gpt2kit.load(hf_tiny, device="cpu", dtype="float32")
    assert (logits(base.model, IDX) - ref).abs().max() > 1e-3  # the adapter changes the model
    lm = gpt2kit.load(hf_tiny, device="cpu", dtype="float32", adapter=final)
    assert (logits(lm.model, IDX) - ref).abs().max() < 1e-4
    # the run folder itself loads as base + its newest adapter
    again = gpt2kit.load(run, device="cpu", dtype="float32")
    assert again.info["adapter"] == str(final)
    assert (logits(again.model, IDX) - ref).abs().max() < 1e-4
    # and the CLI's --adapter runs the same model: greedy text equals the API's
    text = lm.generate("The quick", length=6, temperature=0, seed=1, include_prefix=False)[0]
    r = run_cli(
        "generate",
        "The quick",
        "--model",
        hf_tiny,
        "--adapter",
        final,
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--length",
        "6",
        "--temperature",
        "0",
        "--seed",
        "1",
        "--no-include-prefix",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == text.strip()


@pytest.fixture(scope="module")
def peft_adapter(hf_tiny, tmp_path_factory):
    """An adapter written by PEFT itself: per-module ranks and alphas, rsLoRA, random nonzero B."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    torch.manual_seed(3)
    config = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["c_attn", "mlp.c_proj"],
        fan_in_fan_out=True,
        rank_pattern={"h.1.attn.c_attn": 2},
        alpha_pattern={"mlp.c_proj": 4},
        use_rslora=True,
    )
    model = get_peft_model(GPT2LMHeadModel.from_pretrained(hf_tiny), config)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.normal_(0.0, 0.2)
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(folder)
    return folder, logits(model.eval(), IDX)


def test_peft_adapter_loads_in_gpt2kit_and_merges(hf_tiny, peft_adapter, tmp_path):
    folder, ref = peft_adapter
    lm = gpt2kit.load(hf_tiny, device="cpu", dtype="float32", adapter=folder)
    unmerged = logits(lm.model, IDX)
    assert (unmerged - ref).abs().max() < 1e-4
    r = run_cli("merge", hf_tiny, folder, tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    from transformers import GPT2LMHeadModel

    merged_hf = logits(GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval(), IDX)
    merged = logits(gpt2kit.load(tmp_path / "merged", device="cpu", dtype="float32").model, IDX)
    assert (merged_hf - ref).abs().max() < 1e-4
    assert (merged - unmerged).abs().max() < 1e-4
    # --adapter merges in memory, so on every CPU path (kernels where they build) it runs exactly the model
    # that `merge` wrote, at its speed: the same matrices, the same one-call token step
    for dtype in ("int8", "float16", "auto"):
        lm = gpt2kit.load(hf_tiny, device="cpu", dtype=dtype, adapter=folder)
        plain = gpt2kit.load(tmp_path / "merged", device="cpu", dtype=dtype)
        assert lm.info["cpu_path"] == plain.info["cpu_path"] and (lm.model.step is None) == (plain.model.step is None)
        assert torch.equal(logits(lm.model, IDX), logits(plain.model, IDX)), dtype
        assert lm.generate("The quick", length=8, seed=3) == plain.generate("The quick", length=8, seed=3)
    q = logits(gpt2kit.load(hf_tiny, device="cpu", dtype="int8", adapter=folder).model, IDX)
    assert (q - ref).abs().max() < 0.05 * ref.abs().max()


def test_a_bf16_base_is_the_base_rounded_to_bf16(hf_tiny, corpus, tmp_path):
    """--dtype bfloat16 stores the frozen matrices in bf16: training equals fp32 training on a base whose
    matrices were rounded to bf16 beforehand, bit for bit."""
    state = load_file(hf_tiny / "model.safetensors")
    rounded = {
        k: (v.bfloat16().float() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v)
        for k, v in state.items()
    }
    (tmp_path / "rounded").mkdir()
    save_file(rounded, tmp_path / "rounded" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "rounded" / "config.json").write_text((hf_tiny / "config.json").read_text())
    opts = dict(LORA, steps=3)
    a = gpt2kit.finetune(dataset=corpus, model=str(hf_tiny), checkpoint_dir=tmp_path / "a", dtype="bfloat16", **opts)
    b = gpt2kit.finetune(
        dataset=corpus, model=str(tmp_path / "rounded"), checkpoint_dir=tmp_path / "b", dtype="float32", **opts
    )
    c = gpt2kit.finetune(dataset=corpus, model=str(hf_tiny), checkpoint_dir=tmp_path / "c", dtype="float32", **opts)
    ta, tb, tc = (load_file(x / "adapter_model.safetensors") for x in (a, b, c))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not all(torch.equal(ta[k], tc[k]) for k in ta)


def test_sigint_saves_and_the_lora_run_resumes_exactly(hf_tiny, corpus, tmp_path):
    args = [
        "finetune",
        "--dataset",
        corpus,
        "--model",
        hf_tiny,
        "--lora-rank",
        "4",
        "--lora-alpha",
        "8",
        "--lora-dropout",
        "0.1",
        "--lora-targets",
        "c_attn,mlp.c_proj",
        "--dropout",
        "0.1",
        "--batch-size",
        "4",
        "--context-length",
        "32",
        "--steps",
        "24",
        "--print-every",
        "1",
        "--no-progress",
        "--learning-rate",
        "0.003",
        "--lr-schedule",
        "cosine",
        "--save-every",
        "1000",
        "--device",
        "cpu",
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
    assert len(saved) == 1 and saved[0].name != "step-000024"
    again = run_cli(*args, "--checkpoint-dir", tmp_path / "int")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr
    a = load_file(tmp_path / "ref/run1/step-000024/adapter_model.safetensors")
    b = load_file(tmp_path / "int/run1/step-000024/adapter_model.safetensors")
    assert len(a) == 2 * 2 * 2 and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_two_processes_match_one(hf_tiny, corpus, tmp_path):
    common = [
        "--dataset",
        str(corpus),
        "--model",
        str(hf_tiny),
        "--lora-rank",
        "4",
        "--context-length",
        "32",
        "--steps",
        "4",
        "--no-progress",
        "--device",
        "cpu",
        "--learning-rate",
        "0.003",
    ]
    one = run_cli("finetune", *common, "--batch-size", "4", "--checkpoint-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "GPT2KIT_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29541",
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
    a = load_file(tmp_path / "one/run1/step-000004/adapter_model.safetensors")
    b = load_file(tmp_path / "two/run1/step-000004/adapter_model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert any(a[k].abs().max() > 1e-3 for k in a if "lora_B" in k)  # it trained


@pytest.mark.parametrize(
    "args, message",
    [
        (["finetune", "--lora-rank", "0"], "lora-rank must be at least 1"),
        (["merge", "BASE", "MISSING", "OUT"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(hf_tiny, corpus, tmp_path, args, message):
    if args[0] == "finetune":
        args = [*args, "--dataset", corpus, "--model", hf_tiny, "--checkpoint-dir", tmp_path / "ck"]
    else:
        args = [args[0], hf_tiny, tmp_path / "MISSING", tmp_path / "OUT"]
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "ck").exists() and not (tmp_path / "OUT").exists()


def test_bad_lora_options_are_refused_before_work():
    from gpt2kit.training.options import TrainOptions

    with pytest.raises(UserError, match="unknown lora-targets q_proj"):
        TrainOptions(lora_rank=4, lora_targets="c_attn,q_proj")
    with pytest.raises(UserError, match="lora-rank must be at least 1"):
        TrainOptions(lora_rank=-2)
    with pytest.raises(UserError, match="from-scratch"):
        TrainOptions(lora_rank=4, from_scratch=True)


def test_an_adapter_for_another_base_shape_is_refused(peft_adapter, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=48, n_layer=2, n_head=4)).save_pretrained(
        tmp_path / "wide"
    )
    folder, _ = peft_adapter
    with pytest.raises(UserError, match="different base model"):
        gpt2kit.load(tmp_path / "wide", device="cpu", adapter=folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no adapter_config.json"):
        gpt2kit.load(tmp_path / "wide", device="cpu", adapter=tmp_path / "empty")


def test_export_merges_an_adapter_into_the_gguf(hf_tiny, peft_adapter, tmp_path):
    """`export --adapter`: the GGUF holds base + adapter, the same logits as PEFT's model (fp32)."""
    pytest.importorskip("gguf")
    folder, ref = peft_adapter
    r = run_cli("export", hf_tiny, tmp_path / "tuned.gguf", "--type", "f32", "--adapter", folder)
    assert r.returncode == 0, r.stderr
    back = gpt2kit.load(tmp_path / "tuned.gguf", device="cpu", dtype="float32")
    assert (logits(back.model, IDX) - ref).abs().max() < 1e-4
    plain = run_cli("export", hf_tiny, tmp_path / "plain.gguf", "--type", "f32")
    assert plain.returncode == 0, plain.stderr
    base = gpt2kit.load(tmp_path / "plain.gguf", device="cpu", dtype="float32")
    assert (logits(base.model, IDX) - ref).abs().max() > 1e-2  # the adapter is really in the first


def _tiny_gpt(n_embd=64, n_layer=2):
    from gpt2kit.config import GPTConfig
    from gpt2kit.model import GPT

    model = GPT(GPTConfig(n_vocab=512, n_ctx=64, n_embd=n_embd, n_head=4, n_layer=n_layer))
    model.init_weights(torch.Generator().manual_seed(0))
    return model


def _with_adapter(model, dtype):
    from gpt2kit.adapters.lora import LoraSpec, apply_adapter, freeze_base, new_adapter

    spec = LoraSpec(rank=4, alpha=8.0, dropout=0.0, targets=("c_attn", "c_proj", "c_fc"))
    adapter = new_adapter(model.config, spec, torch.Generator().manual_seed(1))
    for w in adapter.modules.values():  # B off zero, so the adapter's path carries gradient to A
        w.B.normal_(0, 0.02, generator=torch.Generator().manual_seed(2))
    freeze_base(model, dtype)
    return apply_adapter(model, adapter, trainable=True)


def test_a_half_width_base_matches_plain_autograd_on_the_rounded_base():
    """Adapter gradients over an fp16 base (widened per product, narrow kept for backward) equal plain
    nn.Linear autograd on a copy whose matrices were rounded to fp16 beforehand."""
    import copy

    from gpt2kit.adapters.names import MATRICES

    plain = _tiny_gpt()
    rounded = copy.deepcopy(plain)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if any(f"{m}.weight" in name for m in MATRICES):
                p.copy_(p.half().float())
    idx = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
    grads = []
    for model, dtype in ((plain, torch.float16), (rounded, torch.float32)):
        params = _with_adapter(model, dtype)
        if dtype == torch.float32:  # the reference: nn.Linear's own autograd, not FrozenLinear
            for m in model.modules():
                if type(m).__name__ == "LoraLinear":
                    lin = torch.nn.Linear(*reversed(m.base.weight.shape))
                    lin.weight.data, lin.bias.data = m.base.weight.data, m.base.bias.data
                    lin.requires_grad_(False)
                    m.base = lin
        model(idx).square().mean().backward()
        grads.append([p.grad for p in params])
    assert plain.h[0].attn.c_attn.base.weight.dtype == torch.float16
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_autograd_keeps_the_narrow_base_not_a_widened_copy():
    """What autograd saves for backward: with an fp16 base, about the fp32 base's less half its matrices."""

    def saved_bytes(dtype):
        model = _tiny_gpt(n_embd=256)
        _with_adapter(model, dtype)
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.zeros(1, 8, dtype=torch.long)).sum()
        return sum(storages.values())

    # 2 layers of 12 C^2 weights, less the first c_attn (3 C^2): its input, the frozen embeddings, needs no gradient
    matrices_fp32 = (2 * 12 - 3) * 256 * 256 * 4
    saving = saved_bytes(torch.float32) - saved_bytes(torch.float16)
    assert saving == matrices_fp32 // 2


def test_widened_product_has_the_numerical_gradient():
    from gpt2kit.adapters.lora import FrozenLinear

    lin = torch.nn.Linear(5, 3).double()
    frozen = FrozenLinear(lin, torch.float64)
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(frozen, (x,))


def test_the_auto_base_is_half_width_on_every_cpu_and_fp16_falls_back_to_bf16_out_of_range():
    from gpt2kit.adapters.lora import FrozenLinear
    from gpt2kit.cpu.features import info
    from gpt2kit.training.lora import lora_precision
    from gpt2kit.training.options import TrainOptions

    cpu = torch.device("cpu")
    want = {"old_x86": torch.bfloat16, "avx2": torch.float16, "amx": torch.float16, "arm": torch.float16}
    for family, dtype in want.items():
        storage, plan = lora_precision(TrainOptions(lora_rank=4), cpu, info(family))
        assert storage == dtype and plan.dtype == torch.float32, family
    assert lora_precision(TrainOptions(lora_rank=4, dtype="float32"), cpu, info("avx2"))[0] == torch.float32
    lin = torch.nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight[0, 0] = 1e5  # beyond fp16's 65504
    assert FrozenLinear(lin, torch.float16).weight.dtype == torch.bfloat16
    lin.weight.data[0, 0] = 1.0
    assert FrozenLinear(lin, torch.float16).weight.dtype == torch.float16
