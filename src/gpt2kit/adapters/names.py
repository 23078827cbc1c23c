"""The names --lora-targets accepts, without PyTorch (TrainOptions checks them when `gpt2kit --help` runs)."""

from __future__ import annotations

from ..errors import UserError

# The four matrices of a block, as (in, out) multiples of n_embd. Their names are GPT-2's own and
# also PEFT's module names on transformers' GPT2LMHeadModel (which adds the `transformer.` prefix).
MATRICES = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}
# PEFT's suffix rule applies, so `c_proj` means both attn.c_proj and mlp.c_proj.
TARGET_NAMES = ("c_attn", "c_proj", "c_fc", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def parse_targets(text: str) -> tuple[str, ...]:
    """'c_attn,c_proj' -> ('c_attn', 'c_proj'); an unknown name is the user's mistake."""
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    if not targets:
        raise UserError("lora-targets is empty: name one or more of " + ", ".join(TARGET_NAMES))
    unknown = [t for t in targets if t not in TARGET_NAMES]
    if unknown:
        raise UserError(f"unknown lora-targets {', '.join(unknown)}: use {', '.join(TARGET_NAMES)}")
    return targets


def targeted(targets: tuple[str, ...]) -> list[str]:
    """The MATRICES `targets` adapt, by PEFT's rule (an exact name or a `.name` suffix)."""
    return [m for m in MATRICES if any(m == t or m.endswith("." + t) for t in targets)]
