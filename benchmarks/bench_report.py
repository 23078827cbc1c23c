"""results.json -> the Markdown table README.md shows."""
from __future__ import annotations

PARAMS = 124_439_808  # GPT-2 124M, tied head counted once
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
TARGETS = {"gen_b1_default": 2.5, "gen_b1_best": 4.0, "gen_b8_default": 2.5, "train": 3.5, "bound_b1": 0.6}


def report(r: dict) -> str:
    m, meta = r["machine"], r["meta"]
    lines = [f"Measured {meta['date']} on {meta['cores']} cores ({meta['cpu']}), torch {meta['torch']}, "
             f"Python {meta['python']}; AVX512-BF16/AMX: {'yes' if meta['fast_bf16'] else 'no'}. "
             f"Read bandwidth {m['read_GBps']:.1f} GB/s; matmul {m['matmul_float32_GFLOPs']:.0f} GFLOP/s fp32, "
             f"{m['matmul_bfloat16_GFLOPs']:.1f} bf16.", "",
             "| measurement | gpt2kit | transformers | gpt2kit / transformers | bound | gpt2kit % of bound | peak RSS gpt2kit / transformers |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    checks = []
    for b in (1, 8):
        hf = r[f"gen_hf_b{b}"]
        for key in sorted(k for k in r if k.startswith("gen_gpt2kit_") and k.endswith(f"_b{b}")):
            g = r[key]
            label = key.removeprefix("gen_gpt2kit_").removesuffix(f"_b{b}")
            dt = g.get("dtype", label.removesuffix("-pytorch"))
            ratio = g["tokens_per_s"] / hf["tokens_per_s"]
            bound = m["read_GBps"] * 1e9 / (PARAMS * BYTES.get(dt, 4)) * b
            shown = f"`--dtype {label.removesuffix('-pytorch')}`" + (", GPT2KIT_NATIVE=0" if label.endswith("-pytorch") else "")
            lines.append(f"| generate, batch {b}, {shown} ({dt}), tokens/s | {g['tokens_per_s']:.1f} | "
                         f"{hf['tokens_per_s']:.1f} | **{ratio:.2f}x** | {bound:.0f} | {100 * g['tokens_per_s'] / bound:.0f}% | "
                         f"{g['peak_rss_MB']:.0f} / {hf['peak_rss_MB']:.0f} MB |")
            if label == "auto":
                checks.append((f"batch-{b} generation with defaults >= {TARGETS[f'gen_b{b}_default']}x", ratio >= TARGETS[f"gen_b{b}_default"], f"{ratio:.2f}x"))
                if b == 1:
                    frac = g["tokens_per_s"] / bound
                    checks.append((f"batch-1 decoding >= 60% of the read-bandwidth bound ({dt})", frac >= 0.6, f"{100 * frac:.0f}%"))
        if b == 1:
            best = max((r[k]["tokens_per_s"] for k in r if k.startswith("gen_gpt2kit_") and k.endswith("_b1")))
            ratio = best / hf["tokens_per_s"]
            checks.append((f"batch-1 generation with the fastest --dtype >= 4x", ratio >= 4.0, f"{ratio:.2f}x"))
    g, hf = r["train_gpt2kit"], r["train_hf"]
    ratio = g["tokens_per_s"] / hf["tokens_per_s"]
    bound = m["matmul_float32_GFLOPs"] * 1e9 / (6 * PARAMS)
    lines.append(f"| fine-tune, batch {4} x 256, AdamW, tokens/s | {g['tokens_per_s']:.0f} | {hf['tokens_per_s']:.0f} | "
                 f"**{ratio:.2f}x** | {bound:.0f} (6N FLOPs at fp32 matmul speed) | {100 * g['tokens_per_s'] / bound:.0f}% | "
                 f"{g['peak_rss_MB']:.0f} / {hf['peak_rss_MB']:.0f} MB |")
    checks.append(("fine-tuning with defaults >= 3.5x", ratio >= 3.5, f"{ratio:.2f}x"))
    t = r["tokenizer"]
    lines.append(f"| tokenizer, {t['MB']:.1f} MB of text, MB/s | {t['gpt2kit_MBps']:.1f} | {t['hf_MBps']:.1f} "
                 f"({t.get('hf_class', 'GPT2TokenizerFast')}) | **{t['gpt2kit_MBps'] / t['hf_MBps']:.2f}x** | | | |")
    lines.append(f"| `gpt2kit encode` (read, encode, write), MB/s | {t['encode_MBps']:.1f} | | | | | {t['peak_rss_MB']:.0f} MB |")
    if "quality" in r:
        q = r["quality"]
        for label, what in (("bundled", "the bundled model (its weights are stored in fp16)"),
                            ("finetuned", "the bundled model fine-tuned 40 steps in fp32")):
            if f"{label}_float32_loss" not in q:
                continue
            lines += ["", f"Reduced precision against fp32 on held-out text (`tests/fixtures/heldout_*`), {what}: "
                      + "; ".join(f"{d}: top-1 agreement {100 * q[f'{label}_{d}_top1_agreement']:.1f}%, loss "
                                  f"{q[f'{label}_{d}_loss']:.4f} vs {q[f'{label}_float32_loss']:.4f}"
                                  for d in ("bfloat16", "float16", "int8") if f"{label}_{d}_loss" in q)]
    lines += ["", "| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {val} |" for name, ok, val in checks]
    return "\n".join(lines) + "\n"
