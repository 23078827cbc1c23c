"""gpt2kit against Hugging Face transformers, CTranslate2 and llama.cpp, side by side in one run on this machine.

    pip install ctranslate2 llama-cpp-python # the peers (optional: without one its rows are left out)
    python benchmarks/run.py                 # writes benchmarks/results.json and benchmarks/RESULTS.md

Every case runs in its own process (so each one's peak memory is its own) on the same 124M-shaped
GPT-2 with random weights, built once by transformers and loaded into every library (CTranslate2
converts it with its own converter, in int8 and float32; llama.cpp runs gpt2kit's own GGUF export of it,
f16 and q8_0, at batch 1). Also measures this machine's read
bandwidth and matmul speed, the bounds each result is compared with, and records the CPU's flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PROMPT_TOKENS, NEW_TOKENS, TOP_K = 32, 128, 40
PROMPT_PASS = 256  # tokens of the prompt pass timed against the matmul rate (issue 27)
TRAIN_B, TRAIN_T = 4, 256


# --- the cases, each run in a child process -------------------------------------------------------


def case_machine(args) -> dict:
    import torch

    x = torch.ones(256 * 1024 * 1024 // 4 * 4, dtype=torch.float32)  # 1 GiB
    x.sum()
    t = time.perf_counter()
    for _ in range(5):
        x.sum()
    bandwidth = 5 * x.numel() * 4 / (time.perf_counter() - t) / 1e9
    out = {"read_GBps": bandwidth}
    from gpt2kit.cpu import features

    cpu = features.detect()
    out.update(fast_bf16=cpu.native_bf16, cpu=cpu.describe(), family=cpu.family)
    for dtype in ("float32", "bfloat16"):
        size = 512 if dtype == "bfloat16" and not out["fast_bf16"] else 2048  # emulated bf16 is that slow
        a = torch.randn(size, size).to(getattr(torch, dtype))
        b = torch.randn(size, size).to(getattr(torch, dtype))
        a @ b
        t = time.perf_counter()
        for _ in range(3):
            a @ b
        out[f"matmul_{dtype}_GFLOPs"] = 3 * 2 * size**3 / (time.perf_counter() - t) / 1e9
    return out


def _prompt_ids(batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 50000, (batch, PROMPT_TOKENS), generator=g)


def case_gen_hf(args) -> dict:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(args.model).eval()
    ids = _prompt_ids(args.batch)
    kw = dict(do_sample=True, top_k=TOP_K, pad_token_id=50256, attention_mask=torch.ones_like(ids))
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw)
        dt = time.perf_counter() - t
    assert out.shape[1] == PROMPT_TOKENS + NEW_TOKENS
    return {"tokens_per_s": args.batch * NEW_TOKENS / dt}


def case_gen_gpt2kit(args) -> dict:
    import gpt2kit

    lm = gpt2kit.load(args.model, device="cpu", dtype=args.dtype)
    prompts = [lm.tokenizer.decode(row) for row in _prompt_ids(args.batch).tolist()]
    kw = dict(top_k=TOP_K, stop_at_eot=False, batch_size=args.batch, seed=1)
    lm.generate(prompts, length=8, **kw)
    t = time.perf_counter()
    lm.generate(prompts, length=NEW_TOKENS, **kw)
    dt = time.perf_counter() - t
    return {
        "tokens_per_s": args.batch * NEW_TOKENS / dt,
        "dtype": lm.info["dtype"],
        "matrices_GFLOPs": _matrix_rate(_matrices(lm), args.batch),  # the why beside a target not met
    }


def _matrices(lm) -> list:
    """The loaded model's matrices as its CPU model runs them: every block's four, then the output head."""
    from gpt2kit.cpu.runner import block_matrices

    model = getattr(lm.model, "reference", lm.model)
    mats = [getattr(parent, name) for block in model.h for parent, name in block_matrices(block)]
    head = getattr(lm.model, "head", None)  # None: the tied fp32 head, wte itself
    return mats + [head if head is not None else model.wte.weight]


def _matrix_rate(mats: list, rows: int) -> float:
    """GFLOP/s of one product of `rows` rows through each of `mats` (modules or fp32 weight tensors), fastest of 5."""
    import torch
    import torch.nn.functional as F

    shapes = [(m if isinstance(m, torch.Tensor) else m.weight).shape for m in mats]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(rows, k, generator=g) for _, k in shapes]  # (rows, in) for each (out, in)

    def once():
        for m, x in zip(mats, xs):
            F.linear(x, m) if isinstance(m, torch.Tensor) else m(x)

    with torch.inference_mode():
        once()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            once()
            times.append(time.perf_counter() - t)
    return 2 * rows * sum(n * k for n, k in shapes) / min(times) / 1e9


def case_gen_ct2(args) -> dict:
    import ctranslate2

    with tempfile.TemporaryDirectory() as d:
        ctranslate2.converters.TransformersConverter(args.model).convert(d, quantization=args.dtype, force=True)
        gen = ctranslate2.Generator(d, device="cpu", compute_type=args.dtype, intra_threads=os.cpu_count() or 1)
    from gpt2kit.paths import ASSETS_DIR

    # CTranslate2 takes token strings: GPT-2's own byte-level ones, from its vocabulary file
    strings = {i: s for s, i in json.loads((ASSETS_DIR / "encoder.json").read_text()).items()}
    prompts = [[strings[i] for i in row] for row in _prompt_ids(args.batch).tolist()]
    kw = dict(sampling_topk=TOP_K, include_prompt_in_result=False, end_token=[])

    def run(n):
        return gen.generate_batch(prompts, max_length=n, min_length=n, **kw)

    run(8)
    t = time.perf_counter()
    out = run(NEW_TOKENS)
    dt = time.perf_counter() - t
    assert all(len(r.sequences_ids[0]) == NEW_TOKENS for r in out), [len(r.sequences_ids[0]) for r in out]
    return {"tokens_per_s": args.batch * NEW_TOKENS / dt, "dtype": args.dtype}


def case_gen_llama(args) -> dict:
    """llama.cpp (llama-cpp-python) on gpt2kit's own GGUF export of the same weights, batch 1, top-k sampling."""
    from llama_cpp import Llama

    from gpt2kit.export import export

    with tempfile.TemporaryDirectory() as d:
        path = export(args.model, Path(d) / "model.gguf", type=args.dtype)
        llm = Llama(
            model_path=str(path),
            n_ctx=PROMPT_TOKENS + NEW_TOKENS + 16,
            n_batch=PROMPT_TOKENS,
            n_threads=os.cpu_count() or 1,
            verbose=False,
            seed=1,
        )
    prompt = _prompt_ids(1)[0].tolist()

    def run(n):  # llama-cpp-python's raw generator: no stop at <|endoftext|>, like the other cases
        tokens = []
        for token in llm.generate(prompt, top_k=TOP_K, top_p=1.0, min_p=0.0, temp=1.0, repeat_penalty=1.0, reset=True):
            tokens.append(token)
            if len(tokens) == n:
                return tokens

    run(8)
    t = time.perf_counter()
    run(NEW_TOKENS)
    return {"tokens_per_s": NEW_TOKENS / (time.perf_counter() - t), "dtype": args.dtype}


def case_export_openvino(args) -> dict:
    """optimum-intel's export of the model to OpenVINO IR (with its tokenizer), weights in args.dtype (int8, fp32).
    Runs in the interpreter that has the peer (--openvino-python): it needs no gpt2kit."""
    import openvino_genai  # noqa: F401  (the peer must be there before minutes go into the export)

    cli = Path(sys.executable).parent / "optimum-cli"
    cmd = [str(cli), "export", "openvino", "--model", str(args.model), "--task", "text-generation-with-past"]
    subprocess.run(cmd + ["--weight-format", args.dtype, args.ir], check=True, capture_output=True)
    return {"dtype": args.dtype}


def case_gen_openvino(args) -> dict:
    """OpenVINO GenAI's LLMPipeline on the exported IR: the same token-id prompts, top-k sampling, no stop at EOS."""
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(args.model), "CPU")
    ids = _prompt_ids(args.batch).numpy().astype(np.int64)
    inputs = ov_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))

    def run(n):
        config = ov_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = n
        config.do_sample, config.top_k, config.ignore_eos, config.rng_seed = True, TOP_K, True, 1
        return pipe.generate(inputs, config)

    run(8)
    t = time.perf_counter()
    out = run(NEW_TOKENS)
    dt = time.perf_counter() - t
    assert all(len(row) == NEW_TOKENS for row in out.tokens), [len(row) for row in out.tokens]
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")  # what the CPU plugin computes in here
    return {
        "tokens_per_s": args.batch * NEW_TOKENS / dt,
        "dtype": Path(args.model).name,
        "precision": hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint),
        "version": ov_genai.__version__,
    }


def case_prompt_gpt2kit(args) -> dict:
    """One pass over a PROMPT_PASS-token prompt (prefill, as the engine runs it), in FLOPs per second of the
    matrices: 2 x (non-embedding parameters + the tied head) per token, attention's products left out."""
    import torch

    import gpt2kit

    lm = gpt2kit.load(args.model, device="cpu", dtype=args.dtype)
    cfg = lm.model.config
    ids = torch.randint(0, 50000, (1, PROMPT_PASS), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        lm.model(ids[:, :32], last_only=True)  # warm
        times = []
        for _ in range(3):
            t = time.perf_counter()
            lm.model(ids, last_only=True)
            times.append(time.perf_counter() - t)
    matrices = cfg.n_layer * 12 * cfg.n_embd**2 + cfg.n_vocab * cfg.n_embd / PROMPT_PASS  # the head: last row only
    blocks = _matrices(lm)[: 4 * cfg.n_layer]  # the head runs one row of a prompt pass: left out of the why
    g = torch.Generator().manual_seed(1)
    return {
        "tokens_per_s": PROMPT_PASS / min(times),
        "GFLOPs": 2 * matrices * PROMPT_PASS / min(times) / 1e9,
        "dtype": lm.info["dtype"],
        # The why beside the target: the blocks' matrices alone as the model runs them (reduced weights
        # widened first), and PyTorch's fp32 GEMMs of the same shapes (random fp32 weights: nothing to widen).
        "matrices_GFLOPs": _matrix_rate(blocks, PROMPT_PASS),
        "fp32_gemm_GFLOPs": _matrix_rate([torch.randn(m.weight.shape, generator=g) for m in blocks], PROMPT_PASS),
    }


def _random_tokens(path: Path, n: int = 400_000) -> Path:
    import numpy as np

    from gpt2kit.data.tokens import TokenWriter

    w = TokenWriter(path, 50257)
    w.write(np.random.default_rng(0).integers(0, 50257, n))
    w.close()
    return path


def case_train_gpt2kit(args) -> dict:
    import gpt2kit
    from gpt2kit.training.checkpoint import latest_checkpoint, load_training_state

    with tempfile.TemporaryDirectory() as d:
        data = _random_tokens(Path(d) / "data.tokens")
        common = dict(
            dataset=data,
            model=args.model,
            batch_size=TRAIN_B,
            context_length=TRAIN_T,
            checkpoint_dir=Path(d) / "ck",
            progress=False,
            save_every=1000,
        )
        gpt2kit.finetune(steps=2, **common)  # warm-up steps, then resume: elapsed counts step time only
        before = load_training_state(latest_checkpoint(Path(d) / "ck" / "run1"))["elapsed"]
        gpt2kit.finetune(steps=2 + args.steps, **common)
        after = load_training_state(latest_checkpoint(Path(d) / "ck" / "run1"))["elapsed"]
    return {"tokens_per_s": args.steps * TRAIN_B * TRAIN_T / (after - before)}


def case_train_hf(args) -> dict:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(args.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")  # its best CPU setting

    def step():
        x = torch.randint(0, 50257, (TRAIN_B, TRAIN_T), generator=g)
        with autocast:
            loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    return {"tokens_per_s": args.steps * TRAIN_B * TRAIN_T / (time.perf_counter() - t)}


def _bench_text() -> str:
    root = HERE.parent
    parts = [
        p.read_text(encoding="utf-8")
        for p in sorted(root.rglob("*"))
        if p.suffix in (".md", ".py", ".txt")
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and "fixtures" not in p.parts
        and p.stat().st_size < 200_000
    ]
    text = "\n".join(parts)
    return (text * (4_000_000 // len(text) + 1))[:4_000_000]


def case_tokenizer(args) -> dict:
    import shutil

    from transformers import GPT2TokenizerFast

    from gpt2kit.tokenizer import ASSETS, gpt2_tokenizer

    text = _bench_text()
    docs = [text[i : i + 4000] for i in range(0, len(text), 4000)]
    mb = len(text.encode()) / 1e6
    ours = gpt2_tokenizer()
    with tempfile.TemporaryDirectory() as d:  # the names save_pretrained gives GPT-2's files
        shutil.copy(ASSETS / "encoder.json", Path(d) / "vocab.json")
        shutil.copy(ASSETS / "vocab.bpe", Path(d) / "merges.txt")
        hf = GPT2TokenizerFast.from_pretrained(d)
    t = time.perf_counter()
    a = ours.encode_batch(docs)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    b = hf(docs)["input_ids"]
    t_hf = time.perf_counter() - t
    assert a == b, "token ids differ"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "corpus.txt"
        src.write_text(text, encoding="utf-8")
        import gpt2kit

        t = time.perf_counter()
        gpt2kit.encode_dataset([src], Path(d) / "out.tokens", progress=False)
        t_encode = time.perf_counter() - t
    return {
        "MB": mb,
        "hf_class": type(hf).__name__,
        "gpt2kit_MBps": mb / t_ours,
        "hf_MBps": mb / t_hf,
        "encode_MBps": mb / t_encode,
    }


def case_quality(args) -> dict:
    """Reduced precision against fp32 on held-out text of trained models.

    The bundled model ships fp16 weights, so fp16 reproduces it exactly; the second model is the
    bundled one fine-tuned 40 steps in fp32 (on README.md), whose weights fp16 has to round.
    """
    import torch

    import gpt2kit

    text = (HERE.parent / "tests" / "fixtures" / "heldout_phoenix_and_the_turtle.txt").read_text()
    out = {}
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "readme.tokens"
        gpt2kit.encode_dataset([HERE.parent / "README.md"], data, progress=False)
        tuned = gpt2kit.finetune(
            dataset=data,
            steps=40,
            batch_size=4,
            context_length=128,
            learning_rate=3e-4,
            checkpoint_dir=Path(d) / "ck",
            progress=False,
            save_every=1000,
            device="cpu",
        )
        for label, model in (("bundled", None), ("finetuned", tuned)):
            ref = gpt2kit.load(model, device="cpu", dtype="float32")
            ids = torch.tensor([ref.tokenizer.encode(text)[: ref.config.n_ctx]])
            with torch.inference_mode():
                base = ref.model(ids)[0].float()
            out[f"{label}_float32_loss"] = torch.nn.functional.cross_entropy(base[:-1], ids[0, 1:]).item()
            for dtype in ("bfloat16", "float16", "int8"):
                lm = gpt2kit.load(model, device="cpu", dtype=dtype)
                with torch.inference_mode():
                    logits = lm.model(ids)[0].float()
                out[f"{label}_{dtype}_top1_agreement"] = (logits.argmax(-1) == base.argmax(-1)).float().mean().item()
                out[f"{label}_{dtype}_loss"] = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
    return out


CASES = {
    "machine": case_machine,
    "gen-hf": case_gen_hf,
    "gen-gpt2kit": case_gen_gpt2kit,
    "gen-ct2": case_gen_ct2,
    "gen-llama": case_gen_llama,
    "export-openvino": case_export_openvino,
    "gen-openvino": case_gen_openvino,
    "prompt-gpt2kit": case_prompt_gpt2kit,
    "train-gpt2kit": case_train_gpt2kit,
    "train-hf": case_train_hf,
    "tokenizer": case_tokenizer,
    "quality": case_quality,
}


# --- the driver -----------------------------------------------------------------------------------


def run_case(name: str, env: dict | None = None, python: str | None = None, **kw) -> dict:
    """Case `name` in a process of its own, under `python` (a peer's interpreter) or this one."""
    cmd = [python or sys.executable, __file__, "--case", name] + [f"--{k}={v}" for k, v in kw.items()]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"benchmark case {name} {kw} failed")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(
        f"  {name} {kw}: {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()})} "
        f"({time.time() - t:.0f} s)",
        file=sys.stderr,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case")
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--ir", help="export-openvino: the folder to write the IR to")
    args = p.parse_args()
    if args.case:
        result = CASES[args.case](args)
        result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    import torch
    from bench_report import report

    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "gpt2-124M-random"
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"""
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained({str(model)!r})
""",
            ],
            check=True,
            capture_output=True,
        )
        from gpt2kit.paths import ASSETS_DIR  # GPT-2's vocabulary beside it, as a Hugging Face folder has

        shutil.copy(ASSETS_DIR / "encoder.json", model / "vocab.json")
        shutil.copy(ASSETS_DIR / "vocab.bpe", model / "merges.txt")
        results = {"machine": run_case("machine")}
        fast_bf16 = results["machine"]["fast_bf16"]
        # fp16 and bf16 are weight formats of gpt2kit's kernels (fp32 arithmetic); without the kernels
        # PyTorch's CPU fp16/bf16 arithmetic is emulated, dozens of times slower, unless the CPU has native bf16.
        from gpt2kit.cpu import kernels

        has_kernels = kernels.load() is not None
        dtypes = ["auto", "float32", "int8"] + (
            ["float16", "bfloat16"] if has_kernels else ["bfloat16"] if fast_bf16 else []
        )
        peers = [] if importlib.util.find_spec("ctranslate2") is None else ["int8", "float32"]
        for b in (1, 8):
            results[f"gen_hf_b{b}"] = run_case("gen-hf", model=model, batch=b)
            for dt in dtypes:
                results[f"gen_gpt2kit_{dt}_b{b}"] = run_case("gen-gpt2kit", model=model, batch=b, dtype=dt)
            if has_kernels:  # the defaults on PyTorch's kernels alone: what kernels/*.c add
                results[f"gen_gpt2kit_auto-pytorch_b{b}"] = run_case(
                    "gen-gpt2kit", env={"GPT2KIT_NATIVE": "0"}, model=model, batch=b, dtype="auto"
                )
            for dt in peers:
                results[f"gen_ct2_{dt}_b{b}"] = run_case("gen-ct2", model=model, batch=b, dtype=dt)
            if b == 1 and importlib.util.find_spec("llama_cpp") is not None:  # pip install llama-cpp-python
                for dt in ("f16", "q8_0"):
                    results[f"gen_llama_{dt}_b1"] = run_case("gen-llama", model=model, dtype=dt)
        results["train_hf"] = run_case("train-hf", model=model, dtype="float32")
        if fast_bf16:
            results["train_hf_bf16"] = run_case("train-hf", model=model, dtype="bfloat16")
        results["train_gpt2kit"] = run_case("train-gpt2kit", model=model)
    results["tokenizer"] = run_case("tokenizer")
    from gpt2kit.paths import BUNDLED_DIR

    if (BUNDLED_DIR / "config.json").is_file():
        results["quality"] = run_case("quality")
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "fast_bf16": fast_bf16,
        "cpu_described": results["machine"]["cpu"],
        "family": results["machine"]["family"],
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    table = report(results)
    (HERE / "RESULTS.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
