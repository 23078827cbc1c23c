"""gpt2kit: run, fine-tune and serve GPT-2.

    import gpt2kit
    lm = gpt2kit.load()                      # the small bundled model; or "124M", or a folder
    print(lm.generate("ROMEO.", length=40, seed=1)[0])

The public names are the library's own functions and classes, with their real signatures. They
are imported on first use (PEP 562), so `import gpt2kit` and `gpt2kit --help` do not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import UserError

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load": "gpt2kit.lm",
    "LM": "gpt2kit.lm",
    "GPTConfig": "gpt2kit.config",
    "PRESETS": "gpt2kit.config",
    "convert": "gpt2kit.formats",
    "encode_dataset": "gpt2kit.data.encode",
    "finetune": "gpt2kit.training.loop",
    "download": "gpt2kit.hub",
    "perplexity": "gpt2kit.evaluation",
    "Perplexity": "gpt2kit.evaluation",
}

if TYPE_CHECKING:  # what editors and type checkers see
    from .config import PRESETS, GPTConfig
    from .data.encode import encode_dataset
    from .evaluation import Perplexity, perplexity
    from .formats import convert
    from .hub import download
    from .lm import LM, load
    from .training.loop import finetune


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "load",
    "LM",
    "GPTConfig",
    "PRESETS",
    "UserError",
    "convert",
    "encode_dataset",
    "finetune",
    "download",
    "perplexity",
    "Perplexity",
]
