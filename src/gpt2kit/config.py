"""The model's shape: a small frozen dataclass and the four published presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from .errors import UserError

SIZES = ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")


class MalformedConfig(UserError):
    """A config value of the wrong type or out of range, or a config that is not a JSON object.

    A subclass so that the loaders, which know the file, can name it and say what to do (the file is
    damaged: restore it); the same checks guard shapes given as options, where UserError's text suffices.
    """


def _show(value: object) -> str:
    """A value as a config file spells it (null, true, "x"), since that is where people will look for it."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _bad_size(name: str, value: object) -> str | None:
    # bool is an int to Python, but `"n_layer": true` in a file is damage, not a size of 1
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return f"{name} is {_show(value)}; it must be a positive whole number"
    return None


def _bad_epsilon(name: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"{name} is {_show(value)}; it must be a finite positive number such as 1e-05"
    return None


# config.json keys that change what a GPT-2 computes, and the values gpt2kit's model reproduces
# (transformers' GPT2Model options; "gelu_pytorch_tanh" is the same tanh GELU as "gelu_new").
HF_EXACT = {
    "activation_function": (None, "gelu_pytorch_tanh", "gelu_new"),
    "scale_attn_weights": (None, True),
    "scale_attn_by_inverse_layer_idx": (None, False),
    "add_cross_attention": (None, False),
    "reorder_and_upcast_attn": (None, True, False),
    "tie_word_embeddings": (None, True),
}


@dataclass(frozen=True)
class GPTConfig:
    n_vocab: int = 50257
    n_ctx: int = 1024
    n_embd: int = 768
    n_head: int = 12
    n_layer: int = 12
    dropout: float = 0.0  # GPT-2 was trained with 0.1; 0 for inference and by default for fine-tuning
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        # Checked here, where every shape is made (config files, GGUF headers, options), so a bad value
        # stops the load at once rather than as a TypeError deep in the model or after auto-tuning began.
        for name in SIZES:
            if problem := _bad_size(name, getattr(self, name)):
                raise MalformedConfig(f"model size {problem}")
        if problem := _bad_epsilon("layer_norm_epsilon", self.layer_norm_epsilon):
            raise MalformedConfig(problem)
        # JSON may spell it as a whole number (1 for 1.0); the model wants a float
        object.__setattr__(self, "layer_norm_epsilon", float(self.layer_norm_epsilon))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise MalformedConfig(
                f"dropout is {_show(self.dropout)}; it must be a number from 0 up to (not including) 1"
            )
        if self.n_embd % self.n_head:
            raise MalformedConfig(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    # OpenAI's hparams.json names are the same as ours (n_vocab, n_ctx, n_embd, n_head, n_layer).
    def to_hparams(self) -> dict:
        return {k: getattr(self, k) for k in SIZES}

    @classmethod
    def from_hparams(cls, hp: object) -> "GPTConfig":
        """The shape OpenAI's hparams.json describes; MalformedConfig for anything but an object of sizes."""
        if not isinstance(hp, dict):
            raise MalformedConfig(f"it holds {_json_kind(hp)}, not a JSON object of sizes")
        missing = [k for k in SIZES if k not in hp]
        if missing:
            raise MalformedConfig(_missing(missing))
        return cls(**{k: hp[k] for k in SIZES})

    # Hugging Face's config.json for GPT2LMHeadModel, so transformers opens our folders.
    def to_hf_config(self) -> dict:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.n_vocab,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_layer": self.n_layer,
            "n_inner": None,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "bos_token_id": 50256,
            "eos_token_id": 50256,
            "tie_word_embeddings": True,
            "scale_attn_weights": True,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf_config(cls, cfg: object) -> "GPTConfig":
        """The shape a transformers config.json describes; one clear line for anything that is not a GPT-2
        whose outputs gpt2kit's model reproduces (the one rule, for local folders and hub downloads alike).
        MalformedConfig when the file itself is damaged: not an object, a size missing or mistyped."""
        if not isinstance(cfg, dict):
            raise MalformedConfig(f"it holds {_json_kind(cfg)}, not a JSON object")
        missing = [k for k in ("vocab_size", "n_embd", "n_head", "n_layer") if k not in cfg]
        if missing:
            raise MalformedConfig(_missing(missing))
        # Named as the file names them (n_positions, vocab_size), before they become GPTConfig's fields
        ctx_key = "n_positions" if "n_positions" in cfg else "n_ctx"
        for key in ("vocab_size", "n_embd", "n_head", "n_layer", *([ctx_key] if ctx_key in cfg else [])):
            if problem := _bad_size(key, cfg[key]):
                raise MalformedConfig(problem)
        if "layer_norm_epsilon" in cfg and (problem := _bad_epsilon("layer_norm_epsilon", cfg["layer_norm_epsilon"])):
            raise MalformedConfig(problem)
        if cfg.get("model_type", "gpt2") != "gpt2":
            raise UserError(f"config.json describes a {cfg.get('model_type')!r} model, not GPT-2")
        if cfg.get("n_inner") not in (None, 4 * cfg["n_embd"]):
            raise UserError(
                "config.json sets n_inner to something other than 4*n_embd; gpt2kit loads GPT-2's own shape only"
            )
        for key, allowed in HF_EXACT.items():
            if cfg.get(key) not in allowed:
                raise UserError(
                    f"config.json sets {key}={cfg[key]!r}, a GPT-2 variant gpt2kit does not compute "
                    f"(it computes {key}={allowed[-1]!r})"
                )
        return cls(
            n_vocab=cfg["vocab_size"],
            n_ctx=cfg.get("n_positions", cfg.get("n_ctx", cls.n_ctx)),
            n_embd=cfg["n_embd"],
            n_head=cfg["n_head"],
            n_layer=cfg["n_layer"],
            layer_norm_epsilon=cfg.get("layer_norm_epsilon", cls.layer_norm_epsilon),
        )


PRESETS: dict[str, GPTConfig] = {
    "124M": GPTConfig(n_layer=12, n_embd=768, n_head=12),
    "355M": GPTConfig(n_layer=24, n_embd=1024, n_head=16),
    "774M": GPTConfig(n_layer=36, n_embd=1280, n_head=20),
    "1558M": GPTConfig(n_layer=48, n_embd=1600, n_head=25),
}

# Old and Hugging Face names of the same four models.
ALIASES: dict[str, str] = {
    "117M": "124M",
    "345M": "355M",
    "gpt2": "124M",
    "gpt2-medium": "355M",
    "gpt2-large": "774M",
    "gpt2-xl": "1558M",
    "openai-community/gpt2": "124M",
    "openai-community/gpt2-medium": "355M",
    "openai-community/gpt2-large": "774M",
    "openai-community/gpt2-xl": "1558M",
}


def _missing(keys: list[str]) -> str:
    # "lacks or mistypes 'x'" is the wording hub/repos.py gave for a repository's config before this check
    return f"it lacks or mistypes {', '.join(map(repr, keys))}: {'it is' if len(keys) == 1 else 'they are'} missing"


def _json_kind(value: object) -> str:
    """How JSON spells the type of a parsed value, for messages: 'a list', 'null'."""
    if value is None:
        return "null"
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), "something else"
    )


def canonical_name(name: str) -> str | None:
    """'117M' -> '124M'; None when `name` is not one of the published models."""
    if name in PRESETS:
        return name
    return ALIASES.get(name)
