"""results.json -> the Markdown table README.md shows."""

from __future__ import annotations

PARAMS = 124_439_808  # GPT-2 124M, tied head counted once
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
# Issue "Fast and correct on every x86 CPU": batch-1 `--dtype auto` >= 4x transformers and >= 60% of the
# read bound; gpt2kit's fastest >= CTranslate2's fastest at batch 1 and 8; fine-tuning >= 1.5x transformers'
# bf16 autocast and >= 85% of the bf16 matmul rate on CPUs with native bf16, else >= 90% of the fp32 rate.
TARGETS = {
    "gen_b1_default": 4.0,
    "bound_b1": 0.6,
    "train_vs_hf_bf16": 1.5,
    "train_bf16_bound": 0.85,
    "train_fp32_bound": 0.9,
}


def report(r: dict) -> str:
    m, meta = r["machine"], r["meta"]
    lines = [
        f"Measured {meta['date']} on {m.get('cpu', meta['cpu'])}, torch {meta['torch']}, "
        f"Python {meta['python']}; native bf16 (AVX512-BF16/AMX): {'yes' if meta['fast_bf16'] else 'no'}. "
        f"Read bandwidth {m['read_GBps']:.1f} GB/s; matmul {m['matmul_float32_GFLOPs']:.0f} GFLOP/s fp32, "
        f"{m['matmul_bfloat16_GFLOPs']:.1f} bf16.",
        "",
        "| measurement | gpt2kit | transformers | gpt2kit / transformers | bound | gpt2kit % of bound | peak RSS gpt2kit / transformers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    checks = []
    for b in (1, 8):
        hf = r[f"gen_hf_b{b}"]
        lines += [
            _gen_row(r, key, b, hf, m)
            for key in sorted(k for k in r if k.startswith(("gen_gpt2kit_", "gen_ct2_")) and k.endswith(f"_b{b}"))
        ]
        if b == 1:
            g = r["gen_gpt2kit_auto_b1"]
            ratio, frac = g["tokens_per_s"] / hf["tokens_per_s"], g["tokens_per_s"] / _bound(m, g["dtype"], 1)
            checks.append(
                (
                    f"batch-1 `--dtype auto` >= {TARGETS['gen_b1_default']:g}x transformers",
                    ratio >= TARGETS["gen_b1_default"],
                    f"{ratio:.2f}x ({g['dtype']})",
                )
            )
            checks.append(
                (
                    "batch-1 `--dtype auto` >= 60% of the read-bandwidth bound",
                    frac >= TARGETS["bound_b1"],
                    f"{100 * frac:.0f}%",
                )
            )
        ours = max((r[k]["tokens_per_s"], k) for k in r if k.startswith("gen_gpt2kit_") and k.endswith(f"_b{b}"))
        peers = [(r[k]["tokens_per_s"], k) for k in r if k.startswith("gen_ct2_") and k.endswith(f"_b{b}")]
        if peers:
            best = max(peers)
            checks.append(
                (
                    f"batch-{b}: gpt2kit's fastest >= CTranslate2's fastest",
                    ours[0] >= best[0],
                    f"{ours[0]:.1f} ({_label(ours[1], b)}) vs {best[0]:.1f} ({_label(best[1], b)}) tokens/s",
                )
            )
    g, hf = r["train_gpt2kit"], r["train_hf"]
    ratio = g["tokens_per_s"] / hf["tokens_per_s"]
    dt = "bfloat16" if meta["fast_bf16"] else "float32"
    bound = m[f"matmul_{dt}_GFLOPs"] * 1e9 / (6 * PARAMS)
    lines.append(
        f"| fine-tune with the defaults, batch {4} x 256, AdamW, tokens/s | {g['tokens_per_s']:.0f} | {hf['tokens_per_s']:.0f} (fp32) | "
        f"**{ratio:.2f}x** | {bound:.0f} (6N FLOPs at {dt} matmul speed) | {100 * g['tokens_per_s'] / bound:.0f}% | "
        f"{g['peak_rss_MB']:.0f} / {hf['peak_rss_MB']:.0f} MB |"
    )
    if "train_hf_bf16" in r:
        hb = r["train_hf_bf16"]["tokens_per_s"]
        checks.append(
            (
                f"fine-tuning >= {TARGETS['train_vs_hf_bf16']}x transformers with bf16 autocast",
                g["tokens_per_s"] >= TARGETS["train_vs_hf_bf16"] * hb,
                f"{g['tokens_per_s'] / hb:.2f}x",
            )
        )
        checks.append(
            (
                "fine-tuning >= 85% of the bf16 matmul rate",
                g["tokens_per_s"] >= TARGETS["train_bf16_bound"] * bound,
                f"{100 * g['tokens_per_s'] / bound:.0f}%",
            )
        )
    else:
        checks.append(
            (
                "fine-tuning >= 90% of the fp32 matmul rate (no native bf16 here)",
                g["tokens_per_s"] >= TARGETS["train_fp32_bound"] * bound,
                f"{100 * g['tokens_per_s'] / bound:.0f}%",
            )
        )
    t = r["tokenizer"]
    lines.append(
        f"| tokenizer, {t['MB']:.1f} MB of text, MB/s | {t['gpt2kit_MBps']:.1f} | {t['hf_MBps']:.1f} "
        f"({t.get('hf_class', 'GPT2TokenizerFast')}) | **{t['gpt2kit_MBps'] / t['hf_MBps']:.2f}x** | | | |"
    )
    lines.append(
        f"| `gpt2kit encode` (read, encode, write), MB/s | {t['encode_MBps']:.1f} | | | | | {t['peak_rss_MB']:.0f} MB |"
    )
    if "quality" in r:
        q = r["quality"]
        for label, what in (
            ("bundled", "the bundled model (its weights are stored in fp16)"),
            ("finetuned", "the bundled model fine-tuned 40 steps in fp32"),
        ):
            if f"{label}_float32_loss" not in q:
                continue
            lines += [
                "",
                f"Reduced precision against fp32 on held-out text (`tests/fixtures/heldout_*`), {what}: "
                + "; ".join(
                    f"{d}: top-1 agreement {100 * q[f'{label}_{d}_top1_agreement']:.1f}%, loss "
                    f"{q[f'{label}_{d}_loss']:.4f} vs {q[f'{label}_float32_loss']:.4f}"
                    for d in ("bfloat16", "float16", "int8")
                    if f"{label}_{d}_loss" in q
                ),
            ]
    lines += ["", "| target | met | measured |", "| --- | --- | --- |"]
    lines += [f"| {name} | {'yes' if ok else '**no**'} | {val} |" for name, ok, val in checks]
    return "\n".join(lines) + "\n"


def _bound(m: dict, dtype: str, batch: int) -> float:
    """Tokens/s if every weight were read once per step at the measured read bandwidth."""
    return m["read_GBps"] * 1e9 / (PARAMS * BYTES.get(dtype, 4)) * batch


def _label(key: str, b: int) -> str:
    if key.startswith("gen_ct2_"):
        return f"CTranslate2 {key.removeprefix('gen_ct2_').removesuffix(f'_b{b}')}"
    label = key.removeprefix("gen_gpt2kit_").removesuffix(f"_b{b}")
    return f"gpt2kit `--dtype {label.removesuffix('-pytorch')}`" + (
        ", GPT2KIT_NATIVE=0" if label.endswith("-pytorch") else ""
    )


def _gen_row(r: dict, key: str, b: int, hf: dict, m: dict) -> str:
    g = r[key]
    dt = g.get("dtype", "float32")
    ratio, bound = g["tokens_per_s"] / hf["tokens_per_s"], _bound(m, dt, b)
    return (
        f"| generate, batch {b}, {_label(key, b)} ({dt}), tokens/s | {g['tokens_per_s']:.1f} | {hf['tokens_per_s']:.1f} | "
        f"**{ratio:.2f}x** | {bound:.0f} | {100 * g['tokens_per_s'] / bound:.0f}% | {g['peak_rss_MB']:.0f} / {hf['peak_rss_MB']:.0f} MB |"
    )
