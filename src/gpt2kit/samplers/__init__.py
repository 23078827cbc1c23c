"""The samplers of issue 29, as stages of sampling.py's pipeline (order.py says where each goes and why).

The names load when first used, so `from gpt2kit.samplers.help import HELP` (for --help) loads no PyTorch.
"""

import importlib

from .help import HELP

_HOME = {
    "STAGES": "order",
    "stages": "order",
    "Dry": "dry",
    "MirostatV2": "mirostat",
    "Xtc": "xtc",
    "MinP": "truncation",
    "TypicalP": "truncation",
    "EpsilonCutoff": "truncation",
    "EtaCutoff": "truncation",
    "TopNSigma": "truncation",
    "contrastive_pick": "contrastive",
}
__all__ = ["HELP", *_HOME]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
