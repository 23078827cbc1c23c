"""`load` a model from anywhere and the `LM` handle that generates with it."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from . import cpu
from .adapters.lora import merge_into
from .adapters.peft import adapter_base, read_adapter
from .config import GPTConfig
from .cpu.candidates import for_dtype
from .cpu.runner import CpuGPT
from .devices import resolve_device, resolve_dtype
from .errors import UserError
from .formats import build_model, read_checkpoint
from .formats.mapped import allocator_for_loading
from .generation import Piece, Sample, encode_prompt, iter_samples, new_seed
from .hub import resolve_model_path
from .model import GPT
from .options import INT8, GenerateOptions, InspectOptions, LoadOptions
from .paths import BUNDLED_DIR
from .tokenizer import Tokenizer

log = logging.getLogger("gpt2kit")
_LOAD = LoadOptions()  # the one home of load's defaults


def _options(options: GenerateOptions | None, overrides: dict) -> GenerateOptions:
    """`options` (or the defaults) with `overrides` applied; a keyword that is no option is a TypeError."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GenerateOptions)})
    if unknown:
        raise TypeError(f"unknown generation option(s) {', '.join(unknown)}; see gpt2kit.options.GenerateOptions")
    return dataclasses.replace(options or GenerateOptions(), **overrides)


@dataclass
class LM:
    model: GPT | CpuGPT  # CpuGPT after a CPU load (gpt2kit.cpu), else the plain reference GPT
    tokenizer: Tokenizer
    info: dict = field(default_factory=dict)

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    def generate(
        self, prompt: str | list[str] | None = None, options: GenerateOptions | None = None, **overrides
    ) -> list[str]:
        """One string per sample, in prompt order (all samples of the first prompt, then the next).

        `options` (default GenerateOptions()) with any of its fields overridden by keyword, e.g.
        lm.generate("Hi", length=40, top_k=40, seed=1)."""
        o = _options(options, overrides)
        if o.nsamples < 1:
            raise UserError("nsamples must be at least 1 here; only the CLI runs forever with 0")
        return [ev.text for ev in self.samples(prompt, o) if isinstance(ev, Sample)]

    def stream(self, prompt: str | None = None, options: GenerateOptions | None = None, **overrides) -> Iterator[str]:
        """The text pieces of one sample as they are generated (the continuation only)."""
        o = dataclasses.replace(_options(options, overrides), nsamples=1, batch_size=1)
        for ev in self.samples(prompt, o):
            if isinstance(ev, Piece):
                yield ev.text

    def samples(
        self, prompt: str | list[str] | None = None, options: GenerateOptions | None = None, **overrides
    ) -> Iterator[Piece | Sample]:
        """Streamed Pieces and finished Samples (with seeds, token counts, logprobs) in output order."""
        o = _options(options, overrides)
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts:
            raise UserError("no prompts given")
        stops = [o.stop] if isinstance(o.stop, str) else list(o.stop or [])
        return iter_samples(
            self.model,
            self.tokenizer,
            prompts,
            length=o.length,
            settings=o.sampling(),
            stop=stops,
            seed=new_seed() if o.seed is None else o.seed,
            nsamples=o.nsamples,
            batch_size=o.batch_size,
            truncate=o.truncate,
            include_prefix=o.include_prefix,
            stop_at_eot=o.stop_at_eot,
            logprobs=o.logprobs,
        )

    def inspect(
        self,
        text: str,
        *,
        context_length: int | None = InspectOptions.context_length,
        alternatives: int = InspectOptions.alternatives,
    ):
        """GLTR's view of `text` under this model: each token's rank, probability, the top prediction, entropy,
        and the share of tokens in the top 10, 100, 1000 and the rest (gpt2kit.provenance.inspect)."""
        from .provenance.inspect import inspect

        return inspect(self, text, context_length=context_length, alternatives=alternatives)

    @torch.inference_mode()
    def next_token_probs(self, prompt: str | None, top: int = 20) -> list[tuple[int, float]]:
        """The model's top next tokens after `prompt` with their probabilities."""
        ids = encode_prompt(self.tokenizer, prompt, self.config.n_ctx)
        logits = self.model(torch.tensor([ids], device=self.device), last_only=True)[0, -1].float()
        probs = logits.softmax(-1)
        p, i = torch.topk(probs, min(top, probs.numel()))
        return list(zip(i.tolist(), p.tolist()))


def load(
    name: str | Path | None = None,
    *,
    device: str = _LOAD.device,
    dtype: str = _LOAD.dtype,
    checkpoint: str | None = _LOAD.checkpoint,
    offline: bool | None = _LOAD.offline,
    adapter: str | Path | None = _LOAD.adapter,
) -> LM:
    """Load any GPT-2 people have on disk (or a published name, downloaded on first use).

    On a CPU, `lm.model` is a `gpt2kit.cpu.CpuGPT`: the reference GPT on the path gpt2kit.cpu chose
    for this CPU and `dtype` (`lm.info["cpu_path"]` names it). Elsewhere it is the plain `GPT`.
    """
    dev = resolve_device(device)
    if dtype == INT8 and dev.type != "cpu":
        raise UserError("--dtype int8 is weight-only quantization for CPUs; on a GPU use bfloat16 or float16")
    torch_dtype = torch.float32 if dev.type == "cpu" else resolve_dtype(dtype, dev)
    if dev.type == "cpu":
        for_dtype(dtype if dtype != "auto" else "float32", None)  # a bad --dtype fails before the load
    folder = resolve_model_path(name, offline=offline)
    with allocator_for_loading():  # conversions' buffers leave the peak; after the load, passes reuse pages
        return _load_folder(
            folder, dev, dtype, torch_dtype, checkpoint=checkpoint, offline=offline, adapter=adapter, name=name
        )


def _load_folder(
    folder: Path,
    dev: torch.device,
    dtype: str,
    torch_dtype: torch.dtype,
    *,
    checkpoint: str | None,
    offline: bool | None,
    adapter: str | Path | None,
    name: str | Path | None,
) -> LM:
    """load()'s work once its arguments are checked and the model folder found (`torch_dtype`: the model's
    dtype before any CPU path converts it; `dtype`: what was asked for)."""
    if adapter is None and (found := adapter_base(folder, checkpoint)) is not None:
        adapter, folder, checkpoint = found[0], resolve_model_path(found[1], offline=offline), None
    ck = read_checkpoint(folder, checkpoint)
    lora = read_adapter(adapter, ck.config) if adapter is not None else None  # checked before the model is built
    for note in ck.notes:
        log.info("%s: %s", ck.path, note)
    if lora is not None:
        # Merged in memory before any path is chosen: the kernels (and --dtype auto's fidelity check) see
        # one plain model, so an adapter decodes as fast as its base. The files are left as they are.
        merge_into(ck.state_dict, lora)
    gpt = build_model(ck.config, ck.state_dict, ck.path, share=True)
    ck.state_dict.clear()  # the model owns those tensors now; no second reference keeps old copies alive
    gpt = gpt.to(device=dev, dtype=torch_dtype).eval()
    info = {
        "format": ck.format,
        "path": str(ck.path),
        "checkpoint": ck.checkpoint,
        "notes": ck.notes,
        "bundled": folder == BUNDLED_DIR,
        "device": str(dev),
        "name": str(name) if name is not None else "bundled",
    }
    if lora is not None:
        info["adapter"] = str(adapter)
    if dev.type != "cpu":
        return LM(gpt, ck.tokenizer, {**info, "dtype": str(torch_dtype).removeprefix("torch.")})
    model = cpu.prepare(gpt, dtype, probe=cpu.probe_ids(ck.tokenizer.encode))
    info.update(dtype=model.path.split("/")[0], cpu_path=model.path)
    if model.decision is not None:
        info["cpu_auto"] = model.decision.summary()
    return LM(model, ck.tokenizer, info)
