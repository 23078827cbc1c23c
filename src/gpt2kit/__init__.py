"""gpt2kit: run, fine-tune and serve GPT-2.

    import gpt2kit
    lm = gpt2kit.load()                      # the small bundled model; or "124M", or a folder
    print(lm.generate("ROMEO.", length=40, seed=1)[0])
"""
from .config import PRESETS, GPTConfig
from .errors import UserError
from .formats import convert
from .lm import LM, load

__version__ = "0.1.0"


def encode_dataset(inputs, output, **options):
    """Text files/folders/globs -> a gpt2kit token dataset. See gpt2kit.data.encode."""
    from .data.encode import encode_dataset as _encode
    return _encode(inputs, output, **options)


def finetune(*, dataset, model=None, run_name="run1", **options):
    """Fine-tune (or train from scratch); returns the final checkpoint folder. See gpt2kit.training."""
    from .training.loop import finetune as _finetune
    return _finetune(dataset=dataset, model=model, run_name=run_name, **options)


def download(*names, **options):
    """Download published GPT-2 models into the cache. See gpt2kit.hub."""
    from .hub import download as _download
    return _download(*names, **options)


__all__ = ["load", "LM", "GPTConfig", "PRESETS", "UserError", "convert", "encode_dataset", "finetune", "download"]
