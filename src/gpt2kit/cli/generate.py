"""`gpt2kit generate` and `gpt2kit interactive`: text from a model, streamed."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, TextIO

from .. import durable
from ..data.templates import DOCUMENT_START, Template, parse_assignment, parse_template, read_field_sets
from ..errors import UserError
from ..options import GREEDY_BELOW, GenerateOptions
from ..samplers.help import HELP
from .common import add_field, add_model_args, field_names, given, load_model, log

SAMPLE_DELIM = "=" * 20 + "\n"  # between samples, as OpenAI's and gpt-2-simple's scripts print them
PROMPT_FIELD = "prompt"  # a .jsonl prompt file's field unless --prompt-field says otherwise
# The flags add_sampling_args makes from GenerateOptions' fields (json_schema and grammar come from files).
SAMPLING = tuple(
    n
    for n in field_names(GenerateOptions)
    if n not in ("presence_penalty", "frequency_penalty", "logprobs", "json_schema", "grammar")
)
EXAMPLE = (
    'gpt2kit generate "ROMEO." --length 60 --seed 1 --top-k 40',
    "gpt2kit generate --prompt-file prompts.txt --nsamples 3 --format jsonl --output samples.jsonl",
)


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate text (streamed), from prompts, a file, stdin, or unconditionally", example=EXAMPLE
    )
    p.add_argument("prompt", nargs="*", help="one or more prompts (none: read stdin if piped, else unconditional)")
    add_model_args(p)
    add_adapter_arg(p)
    add_sampling_args(p)
    p.add_argument("--prompt-file", help="prompts, one per line (\\n for newlines), or a .jsonl file; - for stdin")
    p.add_argument("--prompt-field", help=f"the JSONL field holding the prompt (default {PROMPT_FIELD!r})")
    p.add_argument(
        "--sample-delim",
        "--sample_delim",
        dest="sample_delim",
        default=SAMPLE_DELIM,
        help=f"text between samples (default {SAMPLE_DELIM!r})",
    )
    p.add_argument("--format", choices=["text", "jsonl"], default="text", help="jsonl: one JSON object per sample")
    p.add_argument(
        "--output",
        help="write the samples to this file instead of the terminal (replaced when the run "
        "ends; an interrupted run keeps the samples finished so far, or else the old file)",
    )
    p.add_argument("--output-dir", help="one file per sample in this folder (existing files are kept)")
    p.add_argument(
        "--template",
        help="generate documents of this template (as encoded with encode --template), "
        'e.g. "[{subreddit}] {title}"; the fields are read back out (--format jsonl)',
    )
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a field value for --template (repeatable); generation starts after the filled fields",
    )
    p.add_argument("--fields", metavar="FILE.jsonl", help="one JSON object of field values per line, a prompt each")
    p.add_argument(
        "--constrain",
        action="store_true",
        default=False,
        help="keep each --template field's value in the template's shape (one line, not running into the "
        "text after it), so every sample's fields read back",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "interactive",
        example=("gpt2kit interactive --length 40 --top-k 40",),
        help="a prompt loop, like OpenAI's interactive_conditional_samples.py",
    )
    add_model_args(p)
    add_adapter_arg(p)
    add_sampling_args(p)
    p.set_defaults(func=cmd_interactive)


def add_adapter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        default=None,
        help="run this LoRA adapter (gpt2kit's or PEFT's folder) on --model, merged in memory at load",
    )


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    add_field(
        p, GenerateOptions, "length", help="new tokens per sample (default: until <|endoftext|> or the context is full)"
    )
    add_field(p, GenerateOptions, "temperature", help=f"0 = greedy (so is anything below {GREEDY_BELOW:g})")
    add_field(p, GenerateOptions, "top_k", help="keep the k likeliest tokens; 0 = off")
    add_field(p, GenerateOptions, "top_p", help="nucleus sampling; 1.0 = off")
    add_field(p, GenerateOptions, "repetition_penalty", help="CTRL's penalty on tokens already seen; 1.0 = off")
    for name in GenerateOptions.SAMPLERS:
        if name == "dry_sequence_breakers":
            add_field(
                p,
                GenerateOptions,
                name,
                action="append",
                metavar="TEXT",
                help=HELP[name] + "; repeatable, replaces the defaults",
                show_default=False,
            )
        else:
            add_field(p, GenerateOptions, name, help=HELP[name])
    add_constraint_args(p)
    add_watermark_args(p)
    add_sample_control_args(p)


def add_watermark_args(p: argparse.ArgumentParser) -> None:
    add_field(
        p,
        GenerateOptions,
        "watermark_key",
        help="mark the text with Kirchenbauer et al.'s watermark under this key "
        "(gpt2kit detect --watermark-key K finds it)",
        unset="no watermark",
    )
    add_field(p, GenerateOptions, "watermark_gamma", help="the watermark's green list, as a share of the vocabulary")
    add_field(p, GenerateOptions, "watermark_delta", help="the watermark's bias on green tokens' logits")
    add_field(p, GenerateOptions, "watermark_context_width", help="tokens the watermark's green list is seeded from")


def add_sample_control_args(p: argparse.ArgumentParser) -> None:
    """Where a sample stops, how many there are and how they print."""
    add_field(
        p,
        GenerateOptions,
        "stop",
        "--stop",
        action="append",
        help="stop where this text appears, and drop it (repeatable)",
    )
    add_field(
        p,
        GenerateOptions,
        "seed",
        help="same seed and settings give the same text, whatever the batch size",
        unset="random",
    )
    add_field(p, GenerateOptions, "nsamples", help="samples per prompt; 0 = until interrupted")
    add_field(p, GenerateOptions, "batch_size", help="samples generated together")
    add_field(
        p, GenerateOptions, "truncate", help="cut each sample at the first occurrence of this text (gpt-2-simple)"
    )
    add_field(p, GenerateOptions, "include_prefix", help="print the prompt before its continuation")
    add_field(
        p,
        GenerateOptions,
        "stop_at_eot",
        "--no-stop-at-eot",
        action="store_false",
        show_default=False,
        help="keep generating past <|endoftext|>",
    )


def add_constraint_args(p: argparse.ArgumentParser) -> None:
    """The structured-output flags: at most one of them (GenerateOptions.constraint says so)."""
    p.add_argument(
        "--json-schema",
        "--json_schema",
        dest="json_schema_file",
        metavar="FILE",
        help="each continuation is a JSON document valid under the JSON Schema in FILE",
    )
    add_field(
        p,
        GenerateOptions,
        "json_object",
        "--json",
        action="store_true",
        show_default=False,
        help="each continuation is a JSON object",
    )
    add_field(
        p,
        GenerateOptions,
        "regex",
        metavar="RE",
        help="each continuation matches this regular expression whole (Rust syntax: no look-around or backreferences)",
    )
    p.add_argument(
        "--grammar",
        dest="grammar_file",
        metavar="FILE",
        help="each continuation follows the grammar in FILE: Lark (llguidance's variant, rule start) "
        "or llama.cpp's GBNF (rule root)",
    )
    add_field(
        p,
        GenerateOptions,
        "choices",
        "--choice",
        action="append",
        metavar="TEXT",
        help="each continuation is one of these texts (repeat the flag for each)",
    )


def generate_options(args: argparse.Namespace, **extra) -> GenerateOptions:
    """The sampling flags (and `extra` options), checked whole by the rules generation applies later:
    called before the model loads, so a bad value or constraint is the only line the user sees."""
    from ..generation import check_counts

    files = {
        "json_schema": _read_text_file(getattr(args, "json_schema_file", None), "JSON schema file"),
        "grammar": _read_text_file(getattr(args, "grammar_file", None), "grammar file"),
    }
    options = GenerateOptions(**given(args, *SAMPLING), **{k: v for k, v in files.items() if v is not None}, **extra)
    check_settings(options.sampling())  # raises UserError on a bad temperature, top_k, schema, ...
    check_counts(length=options.length, nsamples=options.nsamples, batch_size=options.batch_size)
    return options


def check_settings(settings) -> None:
    """A constraint compiled on GPT-2's vocabulary now (cached by content), not after the model loads."""
    if settings.constraint is not None:
        from ..constraints.compiler import compile_constraint
        from ..constraints.vocabulary import vocabulary_for
        from ..tokenizer import gpt2_tokenizer

        compile_constraint(settings.constraint, vocabulary_for(gpt2_tokenizer()))


def _read_text_file(source: str | None, what: str) -> str | None:
    if source is None:
        return None
    path = _existing_file(source, f"the {what}")
    try:
        return _decode(path.read_bytes(), str(path))
    except OSError as e:
        raise UserError(f"cannot read the {what} {path} ({e.strerror}); make it readable or pass another") from None


# --- generate ------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    # Every check first, in the order nothing is touched: flags, then inputs, then where the samples go;
    # only then the model loads and the output is opened.
    _check_combinations(args)
    template, prompts, known = _template_prompts(args)
    options = generate_options(args, **_template_constraint(args, template, list(known.values())))
    prompts = prompts or read_prompts(args)
    if args.output_dir:
        durable.check_writable(Path(args.output_dir))  # also refuses a file where the folder should be
    if args.output:
        durable.check_text_output(Path(args.output))
    lm = load_model(args)
    try:
        with durable.open_text_output(Path(args.output) if args.output else None) as stream:
            out_dir = durable.output_folder(Path(args.output_dir)) if args.output_dir else None
            writer = SampleWriter(
                stream=stream,
                format=args.format,
                out_dir=out_dir,
                delim=args.sample_delim,
                prompts=prompts,
                options=options,
                model=lm.info["name"],
                settings={k: v for k, v in given(args, *SAMPLING).items() if k != "seed"},
                template=template,
                known=known,
            )
            if template:  # each document starts where the training documents did: after <|endoftext|>
                prompts = [DOCUMENT_START + p for p in prompts]
            interrupted = _write_samples(writer, lm.samples(prompts if len(prompts) > 1 else prompts[0], options))
    except OSError as e:  # the disk filled up or went read-only mid-run (a BrokenPipeError is run's to handle)
        target = args.output or args.output_dir
        # a write's error carries no file name; one that does came from opening something else: a bug's
        error = durable.user_error_for(e, Path(target)) if target and e.filename is None else None
        if error is None:
            raise
        raise error from None
    if interrupted:  # the samples so far are saved; the exit code still says the run was cut short
        raise KeyboardInterrupt
    return 0


def _write_samples(writer: SampleWriter, events: Iterator) -> bool:
    """Write every event; True when Ctrl-C came after at least one whole sample. Those samples are kept
    (--nsamples 0 ends no other way); an interrupt before any leaves an --output file as it was."""
    try:
        with _term_as_interrupt():
            for ev in events:
                writer.write(ev)
    except KeyboardInterrupt:
        if not writer.done:
            raise
        return True
    return False


@contextlib.contextmanager
def _term_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout 60 gpt2kit generate ...`, a job scheduler) ends the run as Ctrl-C does: without
    this the samples so far would die in --output's temporary file instead of replacing the old one."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _check_combinations(args: argparse.Namespace) -> None:
    """Flags that contradict each other, refused before anything is read, opened or loaded."""
    if args.output and args.output_dir:
        raise UserError("--output writes every sample to one file and --output-dir a file per sample; pass one of them")
    if args.output_dir and args.format == "jsonl":
        raise UserError(
            "--output-dir writes each sample's text to its own file, not JSON lines; "
            "for --format jsonl pass --output FILE.jsonl instead"
        )


def _template_prompts(args: argparse.Namespace) -> tuple[Template | None, list[str | None], dict]:
    """--template with --field/--fields: the template, one prompt per set of field values, and each
    prompt's fields."""
    if not args.template:
        if args.field or args.fields:
            raise UserError("--field and --fields fill a --template; pass --template too")
        return None, [], {}
    if args.prompt or args.prompt_file:
        raise UserError("--template makes the prompts from --field/--fields; leave out other prompts")
    template = parse_template(args.template)
    template.check_readable()
    given_fields = dict(parse_assignment(item) for item in args.field)
    sets = [{**s, **given_fields} for s in read_field_sets(args.fields)] if args.fields else [given_fields]
    prompts = [template.prompt(s) for s in sets]
    return template, prompts, dict(zip(prompts, sets))


def _template_constraint(args: argparse.Namespace, template: Template | None, sets: list[dict]) -> dict:
    """--constrain: the regex (GenerateOptions' own field) that keeps the continuations in the template's shape."""
    if not args.constrain:
        return {}
    if template is None:
        raise UserError("--constrain keeps the fields of a --template in shape; pass --template too")
    asked = [
        flag
        for flag, dest in (
            ("--json-schema", "json_schema_file"),
            ("--json", "json_object"),
            ("--regex", "regex"),
            ("--grammar", "grammar_file"),
            ("--choice", "choices"),
        )
        if getattr(args, dest, None)
    ]
    if asked:
        raise UserError(f"--constrain makes the template's own constraint; leave out {asked[0]}")
    regexes = {template.continuation_regex(s) for s in sets}
    if len(regexes) > 1:
        raise UserError(
            "under --constrain every set of --fields values must leave the same fields open "
            "(one constraint for every prompt); split the file by the fields each line gives"
        )
    return {"regex": regexes.pop()}


def _existing_file(source: str, what: str) -> Path:
    """`source` as a path to read, or a UserError saying what it is instead (missing, or a folder)."""
    path = Path(source)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; pass a file")
    if not path.exists():  # not is_file(): a pipe (`--prompt-file <(...)`) is a fine thing to read
        raise UserError(f"{what} {path} does not exist; check the path")
    return path


@dataclass
class SampleWriter:
    """Where samples go: streamed text with a delimiter between samples, JSON lines, or a file each."""

    stream: TextIO
    format: str
    out_dir: Path | None
    delim: str
    prompts: list[str | None]
    options: GenerateOptions
    model: str
    settings: dict  # what the user set, recorded with each JSON sample
    template: Template | None = None  # documents of a template: their fields are read back
    known: dict[str, dict[str, str]] = field(default_factory=dict)  # a template prompt -> the fields it was made of
    started: set[int] = field(default_factory=set)
    done: int = 0  # whole samples written

    @property
    def live(self) -> bool:
        return self.format == "text" and self.out_dir is None

    def write(self, ev) -> None:
        from ..generation import Piece

        if self.template and not isinstance(ev, Piece):
            ev = _without_document_start(ev)
        if isinstance(ev, Piece):
            if self.live:
                self._start(ev.index, prefix=True)
                self.stream.write(ev.text)
                self.stream.flush()
        else:
            self._finish(ev)

    def _finish(self, ev) -> None:
        """A whole sample: its JSON line, its own file, or the end of its streamed text."""
        self.done += 1  # counted first: an interrupt while it is written still keeps the output
        if self.format == "jsonl":
            record = {
                "index": ev.index,
                "prompt": ev.prompt,
                "text": ev.text,
                "completion": ev.completion,
                "model": self.model,
                "settings": self.settings,
                "seed": ev.seed,
                "finish_reason": ev.finish_reason,
                "synthetic": True,
            }
            if self.template:
                # None: not the template's shape. The prompt's fields are known: the model cannot change them.
                record["fields"] = self.template.read(ev.prompt + ev.completion, self.known.get(ev.prompt))
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        elif self.out_dir is not None:
            path = durable.free_name(self.out_dir, f"sample-{ev.index + 1:04d}")
            durable.write_text(path, ev.text)
            log.info("wrote %s", path)
        else:
            if ev.index not in self.started:  # a sample with no streamed text (empty continuation)
                self._start(ev.index, prefix=False)
                self.stream.write(ev.text)
            if not ev.text.endswith("\n"):
                self.stream.write("\n")
            self.stream.flush()

    def _start(self, index: int, prefix: bool) -> None:
        """The delimiter before every sample but the first, then (streaming) its prompt."""
        if index in self.started:
            return
        self.started.add(index)
        if index and self.delim:
            self.stream.write(self.delim)
        if prefix and self.options.include_prefix:
            per_prompt = self.options.nsamples or 1
            self.stream.write(self.prompts[(index // per_prompt) % len(self.prompts)] or "")


def _without_document_start(sample):
    """A template's sample as the user sees it: without the <|endoftext|> its prompt starts with."""
    return replace(
        sample, prompt=sample.prompt.removeprefix(DOCUMENT_START), text=sample.text.removeprefix(DOCUMENT_START)
    )


def read_prompts(args: argparse.Namespace) -> list[str | None]:
    """The prompts on the command line, then those of --prompt-file; else piped stdin; else unconditional."""
    prompts: list[str | None] = list(args.prompt or [])
    if args.prompt_file:
        prompts += _prompt_file(args.prompt_file, args.prompt_field)
    elif not prompts and not sys.stdin.isatty():
        # The bytes, decoded as --prompt-file - does: sys.stdin's own decoding depends on the locale, and
        # under a UTF-8 locale it lets invalid bytes through as mojibake (surrogateescape).
        data = _decode(sys.stdin.buffer.read(), "standard input")
        if data.strip():
            prompts.append(data.rstrip("\n"))
    return prompts or [None]


def _prompt_file(source: str, field_name: str | None) -> list[str]:
    """One prompt a line (\\n for a newline), or a JSONL field; - reads stdin."""
    if source == "-":
        raw, name = sys.stdin.buffer.read(), "standard input"
    else:
        path = _existing_file(source, "prompt file")
        try:
            raw, name = path.read_bytes(), str(path)
        except OSError as e:
            raise UserError(
                f"cannot read the prompt file {path} ({e.strerror}); make it readable or pass another"
            ) from None
    text = _decode(raw, name)
    jsonl = field_name or (name.endswith(".jsonl") and PROMPT_FIELD)
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not jsonl:
            prompts.append(line.replace("\\n", "\n"))
            continue
        try:
            prompts.append(str(json.loads(line)[jsonl]))
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{name}:{n} is not a JSON object with a {jsonl!r} field; pass --prompt-field NAME"
            ) from None
    if not prompts:
        raise UserError(f"{name} holds no prompts")
    return prompts


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{name} is not UTF-8 text (byte {e.start}); convert it, e.g. with iconv -t UTF-8") from None


# --- interactive ---------------------------------------------------------------------------------


def cmd_interactive(args: argparse.Namespace) -> int:
    from ..generation import Piece, Sample

    options = generate_options(args)  # before the load: a bad flag is the only line printed
    lm = load_model(args)
    # Like interactive_conditional_samples.py: only the new text, nsamples of each prompt (0 means 1 here).
    options = replace(options, include_prefix=False, nsamples=options.nsamples or 1)
    while (prompt := _ask()) is not None:
        current = None
        for ev in lm.samples(prompt, options):
            if ev.index != current and isinstance(ev, (Piece, Sample)):
                if current is not None:
                    print()
                print("=" * 40 + f" SAMPLE {ev.index + 1} " + "=" * 40)
                current = ev.index
            if isinstance(ev, Piece):
                print(ev.text, end="", flush=True)
        print("\n" + "=" * 80)
    return 0


def _ask() -> str | None:
    """The next non-empty prompt, or None at the end of input."""
    try:
        raw = input("Model prompt >>> ")
        while not raw:
            print("Prompt should not be empty!")
            raw = input("Model prompt >>> ")
    except EOFError:
        print()
        return None
    return raw
