"""`load` a model from anywhere and the `LM` handle that generates with it."""
from __future__ import annotations

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
from .formats.mapped import keep_big_allocations_returnable
from .hub import resolve_model_path
from .options import INT8, GenerateOptions, LoadOptions
from .paths import BUNDLED_DIR
from .generation import Piece, Sample, encode_prompt, iter_samples, new_seed
from .model import GPT
from .sampling import SamplingSettings
from .tokenizer import Tokenizer

log = logging.getLogger("gpt2kit")
_G = GenerateOptions  # the one home of generation's defaults
_L = LoadOptions  # and of load's


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

    def generate(self, prompt: str | list[str] | None = None, *, length: int | None = _G.length,
                 temperature: float = _G.temperature, top_k: int = _G.top_k, top_p: float = _G.top_p,
                 repetition_penalty: float = _G.repetition_penalty, presence_penalty: float = _G.presence_penalty,
                 frequency_penalty: float = _G.frequency_penalty, stop: str | list[str] | None = None,
                 seed: int | None = _G.seed, nsamples: int = _G.nsamples, batch_size: int = _G.batch_size,
                 truncate: str | None = _G.truncate, include_prefix: bool = _G.include_prefix,
                 stop_at_eot: bool = _G.stop_at_eot) -> list[str]:
        """One string per sample, in prompt order (all samples of the first prompt, then the next).
        Defaults: gpt2kit.options.GenerateOptions."""
        if nsamples < 1:
            raise UserError("nsamples must be at least 1 here; only the CLI runs forever with 0")
        options = {k: v for k, v in locals().items() if k not in ("self", "prompt")}
        return [ev.text for ev in self.samples(prompt, **options) if isinstance(ev, Sample)]

    def stream(self, prompt: str | None = None, *, length: int | None = _G.length, temperature: float = _G.temperature,
               top_k: int = _G.top_k, top_p: float = _G.top_p, repetition_penalty: float = _G.repetition_penalty,
               presence_penalty: float = _G.presence_penalty, frequency_penalty: float = _G.frequency_penalty,
               stop: str | list[str] | None = None, seed: int | None = _G.seed,
               stop_at_eot: bool = _G.stop_at_eot) -> Iterator[str]:
        """The text pieces of one sample as they are generated (the continuation only)."""
        options = {k: v for k, v in locals().items() if k not in ("self", "prompt")}
        for ev in self.samples(prompt, nsamples=1, batch_size=1, **options):
            if isinstance(ev, Piece):
                yield ev.text

    def samples(self, prompt: str | list[str] | None = None, *, length: int | None = _G.length,
                temperature: float = _G.temperature, top_k: int = _G.top_k, top_p: float = _G.top_p,
                repetition_penalty: float = _G.repetition_penalty, presence_penalty: float = _G.presence_penalty,
                frequency_penalty: float = _G.frequency_penalty, stop: str | list[str] | None = None,
                seed: int | None = _G.seed, nsamples: int = _G.nsamples, batch_size: int = _G.batch_size,
                truncate: str | None = _G.truncate, include_prefix: bool = _G.include_prefix,
                stop_at_eot: bool = _G.stop_at_eot, logprobs: int = _G.logprobs) -> Iterator[Piece | Sample]:
        """Streamed Pieces and finished Samples (with seeds, token counts, logprobs) in output order."""
        prompts = prompt if isinstance(prompt, list) else [prompt]
        if not prompts:
            raise UserError("no prompts given")
        settings = SamplingSettings(temperature=temperature, top_k=top_k, top_p=top_p,
                                    repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                    frequency_penalty=frequency_penalty)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return iter_samples(self.model, self.tokenizer, prompts, length=length, settings=settings, stop=stops,
                            seed=new_seed() if seed is None else seed, nsamples=nsamples, batch_size=batch_size,
                            truncate=truncate, include_prefix=include_prefix, stop_at_eot=stop_at_eot,
                            logprobs=logprobs)

    @torch.inference_mode()
    def next_token_probs(self, prompt: str | None, top: int = 20) -> list[tuple[int, float]]:
        """The model's top next tokens after `prompt` with their probabilities."""
        ids = encode_prompt(self.tokenizer, prompt, self.config.n_ctx)
        logits = self.model(torch.tensor([ids], device=self.device), last_only=True)[0, -1].float()
        probs = logits.softmax(-1)
        p, i = torch.topk(probs, min(top, probs.numel()))
        return list(zip(i.tolist(), p.tolist()))


def load(name: str | Path | None = None, *, device: str = _L.device, dtype: str = _L.dtype,
         checkpoint: str | None = _L.checkpoint, offline: bool | None = _L.offline,
         adapter: str | Path | None = _L.adapter) -> LM:
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
    keep_big_allocations_returnable()  # so a conversion's freed buffers do not stay in the peak (formats/mapped.py)
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
    info = {"format": ck.format, "path": str(ck.path), "checkpoint": ck.checkpoint, "notes": ck.notes,
            "bundled": folder == BUNDLED_DIR, "device": str(dev), "name": str(name) if name is not None else "bundled"}
    if lora is not None:
        info["adapter"] = str(adapter)
    if dev.type != "cpu":
        return LM(gpt, ck.tokenizer, {**info, "dtype": str(torch_dtype).removeprefix("torch.")})
    model = cpu.prepare(gpt, dtype, probe=cpu.probe_ids(ck.tokenizer.encode))
    info.update(dtype=model.path.split("/")[0], cpu_path=model.path)
    if model.decision is not None:
        info["cpu_auto"] = model.decision.summary()
    return LM(model, ck.tokenizer, info)

