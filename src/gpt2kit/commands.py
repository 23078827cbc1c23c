"""The subcommands: each parses its options and calls one library function."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import SAMPLING, _Parser, _load, add_model_args, add_sampling_args, given, log
from .errors import UserError


# --- generate / interactive / info / convert --------------------------------------------------

def read_prompts(args) -> list[str | None]:
    prompts: list[str | None] = list(args.prompt or [])
    if args.prompt_file:
        if args.prompt_file == "-":
            raw = sys.stdin.buffer.read()
            name = "standard input"
        else:
            path = Path(args.prompt_file)
            if not path.is_file():
                raise UserError(f"prompt file {path} does not exist")
            raw, name = path.read_bytes(), str(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{name} is not UTF-8 text (byte {e.start}); convert it, e.g. with iconv -t UTF-8") from None
        jsonl = args.prompt_field or (name.endswith(".jsonl") and "prompt")
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if jsonl:
                try:
                    obj = json.loads(line)
                    prompts.append(str(obj[jsonl]))
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{name}:{n} is not a JSON object with a {jsonl!r} field; pass --prompt-field NAME") from None
            else:
                prompts.append(line.replace("\\n", "\n"))
        if not prompts:
            raise UserError(f"{name} holds no prompts")
    elif not prompts and not sys.stdin.isatty():
        try:
            data = sys.stdin.read()
        except UnicodeDecodeError:
            raise UserError("standard input is not UTF-8 text") from None
        if data.strip():
            prompts.append(data.rstrip("\n"))
    return prompts or [None]


def cmd_generate(args) -> int:
    from .generation import Piece, Sample
    lm = _load(args)
    prompts = read_prompts(args)
    options = given(args, *SAMPLING)
    if options.get("seed") is None:
        from .generation import new_seed
        options["seed"] = new_seed()
    include_prefix = options.get("include_prefix", True)
    delim = args.sample_delim if args.sample_delim is not None else "=" * 20 + "\n"
    out_file = None
    if args.output_dir:
        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)  # an existing folder is kept; new files get free names
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        out_file = open(Path(args.output), "w", encoding="utf-8")
    stream = out_file or sys.stdout
    live = args.format == "text" and not args.output_dir
    settings = {k: v for k, v in options.items() if k not in ("seed",)}
    started = set()
    count = 0
    try:
        for ev in lm.samples(prompts if len(prompts) > 1 else prompts[0], **options):
            if isinstance(ev, Piece):
                if live:
                    if ev.index not in started:
                        started.add(ev.index)
                        if ev.index and delim:
                            stream.write(delim)
                        if include_prefix:
                            stream.write(_prefix_of(prompts, ev.index, options))
                    stream.write(ev.text)
                    stream.flush()
                continue
            assert isinstance(ev, Sample)
            count += 1
            if args.format == "jsonl":
                record = {"index": ev.index, "prompt": ev.prompt, "text": ev.text, "completion": ev.completion,
                          "model": lm.info["name"], "settings": settings, "seed": ev.seed,
                          "finish_reason": ev.finish_reason, "synthetic": True}
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
                stream.flush()
            elif args.output_dir:
                path = _free_name(out_dir, ev.index)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(ev.text, encoding="utf-8")
                tmp.replace(path)
                log.info("wrote %s", path)
            elif live:
                if ev.index not in started:  # a sample with no streamed text (empty continuation)
                    started.add(ev.index)
                    if ev.index and delim:
                        stream.write(delim)
                    stream.write(ev.text)
                if not ev.text.endswith("\n"):
                    stream.write("\n")
                stream.flush()
    finally:
        if out_file:
            out_file.close()
    return 0


def _prefix_of(prompts, index, options) -> str:
    n = options.get("nsamples", 1) or 1
    return prompts[(index // n) % len(prompts)] or ""


def _free_name(folder: Path, index: int) -> Path:
    path = folder / f"sample-{index + 1:04d}.txt"
    k = 1
    while path.exists():
        path = folder / f"sample-{index + 1:04d}-{k}.txt"
        k += 1
    return path


def cmd_interactive(args) -> int:
    lm = _load(args)
    options = given(args, *SAMPLING)
    options["include_prefix"] = False  # like interactive_conditional_samples.py: only the new text
    nsamples = options.pop("nsamples", 1) or 1
    from .generation import Piece, Sample
    while True:
        try:
            raw = input("Model prompt >>> ")
        except EOFError:
            print()
            return 0
        while not raw:
            print("Prompt should not be empty!")
            try:
                raw = input("Model prompt >>> ")
            except EOFError:
                print()
                return 0
        current = None
        for ev in lm.samples(raw, nsamples=nsamples, **options):
            idx = ev.index
            if idx != current and isinstance(ev, (Piece, Sample)):
                if current is not None:
                    print()
                print("=" * 40 + f" SAMPLE {idx + 1} " + "=" * 40)
                current = idx
            if isinstance(ev, Piece):
                print(ev.text, end="", flush=True)
        print("\n" + "=" * 80)


def cmd_info(args) -> int:
    from .formats import read_checkpoint
    from .hub import resolve_model_path
    folder = resolve_model_path(args.model_path if args.model_path else None, offline=args.offline)
    ck = read_checkpoint(folder, args.checkpoint)
    c = ck.config
    n_params = sum(t.numel() for t in ck.state_dict.values())
    from . import native
    info = {"path": str(ck.path), "format": ck.format, "checkpoint": ck.checkpoint, "parameters": n_params,
            "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "n_ctx": c.n_ctx, "n_vocab": c.n_vocab,
            "vocabulary": ck.tokenizer.source, "notes": ck.notes, "cpu_kernels": native.status()}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model       {ck.path}")
    print(f"format      {ck.format}" + (f" (checkpoint {ck.checkpoint})" if ck.checkpoint else ""))
    print(f"parameters  {n_params:,} ({n_params / 1e6:.1f}M)")
    print(f"layers      {c.n_layer}, width {c.n_embd}, heads {c.n_head}")
    print(f"context     {c.n_ctx} tokens")
    print(f"vocabulary  {c.n_vocab} tokens, from {ck.tokenizer.source}")
    for note in ck.notes:
        print(f"note        {note}")
    print(f"cpu kernels {info['cpu_kernels']}")
    return 0


def cmd_convert(args) -> int:
    from .formats import convert
    out = convert(args.src, args.dst, checkpoint=args.checkpoint, dtype=args.dtype)
    print(f"wrote {out} (config.json, model.safetensors, vocabulary): opens in gpt2kit and Hugging Face transformers")
    return 0
