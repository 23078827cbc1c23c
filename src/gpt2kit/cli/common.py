"""What every `gpt2kit` command shares: the parser, flags built from options dataclasses, model
loading, and `run`, which turns a UserError into one line and exit code 2 (bugs keep their traceback).

This module imports no command module (cli/__init__.py hands the commands to `run`), and nothing
heavy at the top: `gpt2kit --help` must not pay for PyTorch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from .. import __version__, durable
from ..errors import UserError
from ..options import LoadOptions, dtype_choices

log = logging.getLogger("gpt2kit")


class Parser(argparse.ArgumentParser):
    """argparse with gpt2kit's error line, and an optional usage example at the end of --help.

    example: one command line, or several, shown under "example:" after the options; a command module
    passes it to `sub.add_parser(..., example=...)` (argparse hands add_parser's keywords to this class).
    """

    def __init__(self, *args: Any, example: str | Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.examples = [example] if isinstance(example, str) else list(example or [])

    def format_help(self) -> str:
        # Appended verbatim: argparse's formatter would re-wrap an epilog and join the lines of a command.
        text = super().format_help()
        if self.examples:
            text += "\nexample:\n" + "".join(f"  {line}\n" for line in self.examples)
        return text

    def error(self, message: str) -> typing.NoReturn:  # argparse's own errors: one line and exit code 2, like ours
        self.exit(2, f"gpt2kit: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:  # type: ignore[override]
        # argparse reports a subcommand's unknown flags from the top parser, whose --help does not list them:
        # report them from the subcommand's parser, so the line points at `gpt2kit generate --help`.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> Parser:
        """The (sub)command parser that `parsed` went through last."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
                if isinstance(chosen, Parser):
                    return chosen._chosen(parsed)
        return self


class _Handler(logging.Handler):
    """Messages to stderr without breaking a progress bar; warnings say who is speaking."""

    def emit(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            msg = f"gpt2kit: {msg}"
        try:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        except ImportError:
            print(msg, file=sys.stderr)


def build_parser(commands: Sequence[ModuleType]) -> Parser:
    """The `gpt2kit` parser: each command module adds its subcommands with `register(subparsers)`."""
    parser = Parser(prog="gpt2kit", description="Run, fine-tune and serve GPT-2.")
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in commands:
        command.register(sub)
    return parser


def run(argv: list[str] | None, commands: Sequence[ModuleType]) -> int:
    """Parse, run the chosen command's `func(args)`, and map what it raises to an exit code."""
    args = build_parser(commands).parse_args(argv)
    handler = _Handler()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return args.func(args) or 0
    except UserError as e:  # a user's mistake: one line; anything else is a bug and keeps its traceback
        print(f"gpt2kit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2kit generate ... | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # standard output on a full disk: the machine's state, not a bug (others keep their traceback)
        # only a write's error (no file name) that means no space: opening or reading anything else is not this
        error = durable.user_error_for(e, Path("standard output")) if e.filename is None else None
        if error is None or durable.os_error(e) not in durable.NO_SPACE:
            raise
        _drop_stdout()
        print(f"gpt2kit: error: {error}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what it still buffers would fail again at exit, as a multi-line report."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# --- flags from options dataclasses --------------------------------------------------------------


def given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options the user set, for passing on: unset ones keep the library's defaults."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def field_names(options: type) -> list[str]:
    return [f.name for f in dataclasses.fields(options)]


def default_of(options: type, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(options)}[name]


@functools.lru_cache(maxsize=None)
def _field_types(options: type) -> dict[str, Any]:
    """The evaluated annotations of an options dataclass, once per class: evaluating them for every flag
    was most of the time spent building the parser (TrainOptions' fields, once per field)."""
    return typing.get_type_hints(options)


def add_field(
    p: argparse.ArgumentParser,
    options: type,
    name: str,
    *flags: str,
    help: str = "",
    show_default: bool = True,
    unset: str | None = None,
    **kwargs: Any,
) -> None:
    """A flag for field `name` of the dataclass `options`, which owns its default and its type.

    The flag itself defaults to None, so `given` passes on only what the user set, and the help says
    the dataclass's default; `unset` says in words what a default of None means ("random"). Flags
    default to --the-name and, for names with underscores, --the_name (the spelling of OpenAI's
    scripts and gpt-2-simple).
    """
    flags = flags or (f"--{name.replace('_', '-')}",) + ((f"--{name}",) if "_" in name else ())
    default = default_of(options, name)
    shown = unset if default is None else None if default == () else default
    if show_default and shown is not None:
        help = f"{help} (default {shown})" if help else f"(default {shown})"
    if "action" not in kwargs:
        hint = _field_types(options)[name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = base
    p.add_argument(*flags, dest=name, default=None, help=help.replace("%", "%%"), **kwargs)  # argparse %-formats help


# --- the model a command runs on -----------------------------------------------------------------

LOAD_OPTIONS = tuple(f.name for f in dataclasses.fields(LoadOptions))  # adapter: where a command adds --adapter


def add_model_args(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    """--model and how it loads. Unset flags are not passed on: `load`'s defaults are the only ones.
    many: --model may repeat (a list), for `serve`."""
    p.add_argument(
        "--model",
        "--model_name",
        "--model-name",
        dest="model",
        default=None,
        action="append" if many else "store",
        help="a folder in any GPT-2 format, 124M/355M/774M/1558M, or a GPT-2 on the Hugging Face hub, "
        "OWNER/NAME[@REVISION] (default: the small bundled model)"
        + ("; repeat to serve several, ID=PATH names one's id" if many else ""),
    )
    p.add_argument(
        "--models-dir",
        "--models_dir",
        dest="models_dir",
        default=None,
        help="look for published models in DIR/<name> (OpenAI's layout), as download_model.py writes them",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="which checkpoint in a run folder: model-N (TF runs) or step-N (gpt2kit runs)",
    )
    # The defaults in the help are LoadOptions' own (add_field), so they cannot drift from what `load` does.
    add_field(p, LoadOptions, "device", help="auto | cpu | cuda | mps (auto: cuda, then mps, then cpu)")
    add_field(
        p,
        LoadOptions,
        "dtype",
        help=f"{dtype_choices()} (int8: CPUs, int8 weights, a quarter of the bytes; "
        "auto: on a CPU, the fastest path measured here that keeps fp32's answers)",
    )
    p.add_argument("--offline", action="store_true", default=None, help="never download; fail if the model is not here")


def model_name(args: argparse.Namespace) -> str | None:
    """--model, looked up in --models-dir first when that holds it (OpenAI's models/<name>/ layout)."""
    return in_models_dir(args.model, getattr(args, "models_dir", None))


def in_models_dir(name: str | None, models_dir: str | None) -> str | None:
    if name and models_dir and not Path(name).exists():
        return str(Path(models_dir) / name)
    return name


def load_model(args: argparse.Namespace):
    """The model the model flags name, with a word to first-time users who got the bundled one."""
    from ..lm import load

    lm = load(model_name(args), **given(args, *LOAD_OPTIONS))
    if lm.info.get("bundled"):
        log.warning(
            "using the small model bundled with gpt2kit (Shakespeare and the King James Bible); "
            "for real GPT-2 run `gpt2kit download 124M` and pass --model 124M"
        )
    return lm
