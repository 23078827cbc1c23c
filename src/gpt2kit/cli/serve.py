"""`gpt2kit serve`: a model behind an OpenAI-compatible API and a web playground."""

from __future__ import annotations

import argparse

from ..options import ServeOptions
from .common import add_field, add_model_args, field_names, given, in_models_dir


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        example=("gpt2kit serve --model checkpoint/run1 --port 8000",),
        help="serve a model over an OpenAI-compatible API with a web playground",
    )
    add_model_args(p, many=True)
    add_field(p, ServeOptions, "host", help="address to bind; 127.0.0.1 is this machine only")
    add_field(p, ServeOptions, "port", help="port to listen on; 0: any free port (the one bound is printed)")
    add_field(
        p, ServeOptions, "api_key", "--api-key", help="require Authorization: Bearer KEY (or set GPT2KIT_API_KEY)"
    )
    add_field(
        p,
        ServeOptions,
        "served_name",
        "--served-name",
        help="the model id clients send, for a single --model (default: the folder's name; with several "
        "models: --model ID=PATH)",
    )
    _add_limit_args(p)
    _add_chat_args(p)
    p.set_defaults(func=cmd_serve)


def _add_limit_args(p: argparse.ArgumentParser) -> None:
    """How much work the server takes on, each checked before the work starts."""
    add_field(p, ServeOptions, "max_batch", "--max-batch", help="rows decoded together")
    add_field(p, ServeOptions, "max_queue", "--max-queue", help="requests waiting before 429")
    add_field(
        p, ServeOptions, "max_tokens_limit", "--max-tokens-limit", help="the largest max_tokens a request may ask"
    )
    add_field(
        p,
        ServeOptions,
        "max_request_rows",
        "--max-request-rows",
        help="the most rows (n x prompts) one request may ask",
    )
    add_field(p, ServeOptions, "max_request_bytes", "--max-request-bytes", help="larger request bodies get 413")
    add_field(
        p,
        ServeOptions,
        "max_batch_tokens",
        "--max-batch-tokens",
        help="KV-cache positions running rows may reserve together (each: prompt + max_tokens, at most the "
        "context); requests wait until they fit, a row that never could gets 400 (default: max-batch x context)",
    )
    add_field(
        p,
        ServeOptions,
        "shutdown_timeout",
        "--shutdown-timeout",
        help="seconds SIGTERM gives running requests to finish before they are cancelled",
    )
    add_field(
        p,
        ServeOptions,
        "max_memory",
        "--max-memory",
        metavar="SIZE",
        help="the most memory the models may take together (e.g. 8G, 512M), checked before any loads: "
        "weights plus KV budget each (default: the memory available)",
    )


def _add_chat_args(p: argparse.ArgumentParser) -> None:
    add_field(
        p,
        ServeOptions,
        "chat_template",
        "--chat-template",
        metavar="FILE",
        show_default=False,
        help="a Jinja chat template (transformers' convention) for /v1/chat/completions (default: gpt2kit's "
        "plain 'User: ... Assistant:' transcript)",
    )
    add_field(
        p,
        ServeOptions,
        "chat_stop",
        "--chat-stop",
        action="append",
        metavar="TEXT",
        help="a turn marker that ends a chat reply; repeat for several (replaces the default)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server import serve

    options = given(args, *field_names(ServeOptions))
    if "chat_stop" in options:
        options["chat_stop"] = tuple(options["chat_stop"])
    serve([_in_models_dir(m, args.models_dir) for m in args.model or [None]], ServeOptions(**options))
    return 0


def _in_models_dir(spec: str | None, models_dir: str | None) -> str | None:
    """--models-dir applies to the PATH of ID=PATH too."""
    from ..server.models import split_id

    id_, source = split_id(spec)
    found = in_models_dir(source, models_dir)
    return found if id_ is None else f"{id_}={found}"
