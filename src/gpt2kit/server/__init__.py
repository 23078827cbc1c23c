"""`gpt2kit serve`: the model behind an OpenAI-compatible API and a web playground.

    api.py          the HTTP routes (thin): authentication, limits, errors in OpenAI's shape
    protocol.py     the request and answer bodies (pydantic), which the OpenAPI schema is made from
    completions.py  a request turned into generation jobs (best_of, logit_bias), results in /v1/completions' layout
    chat.py         /v1/chat/completions: the chat template (Jinja, sandboxed) and the chat layout
    tokens.py       /tokenize and /detokenize
    metrics.py      /metrics in Prometheus' text format
    engine.py       the worker thread that owns the model and decodes queued requests in shared batches
    static/         the playground
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from ..errors import UserError
from ..options import ServeOptions

log = logging.getLogger("gpt2kit")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_GRACE = 5.0  # seconds after the drain deadline for the last answers (error events) to be sent


def serve(model: str | Path | None = None, options: ServeOptions | None = None) -> None:
    """Serve until interrupted. The model loads in the background; /health says 503 until it is in.

    A model that cannot load stops the server: a UserError (bad files) as that error, anything
    else (a bug) with its traceback.
    """
    import uvicorn

    from ..hub import resolve_model_path
    from ..lm import load
    from .api import create_app
    from .chat import ChatTemplate
    from .engine import Engine

    options = options or ServeOptions()
    folder = resolve_model_path(model, offline=options.offline)  # fail fast, before binding, on a bad path
    # The environment is read here, at call time, never at import.
    options = dataclasses.replace(options, api_key=options.api_key or os.environ.get("GPT2KIT_API_KEY") or None)
    chat_template = ChatTemplate(options.chat_template, tuple(options.chat_stop))  # a bad template: stop before binding
    name = options.served_name or (os.path.basename(os.path.normpath(str(model))) if model else "gpt2kit-bundled")
    server: uvicorn.Server | None = None

    def stop(error: BaseException) -> None:
        # A model that cannot load is not going to: stop serving rather than answer 503 forever.
        if server is not None:
            server.should_exit = True

    engine = Engine(lambda: load(folder, **options.load_kwargs()), max_batch=options.max_batch,
                    max_queue=options.max_queue, max_batch_tokens=options.max_batch_tokens, on_load_error=stop)
    app = create_app(engine, model_name=name, options=options, chat_template=chat_template)
    if options.host not in LOCAL_HOSTS and not options.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this machine can use the model", options.host)
    # uvicorn's own graceful shutdown is the backstop; the engine's drain answers every request first.
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                            timeout_graceful_shutdown=options.shutdown_timeout + SHUTDOWN_GRACE)
    server = _graceful_server(config, engine, options.shutdown_timeout)
    if engine.load_exception is None:
        log.info("serving %s on http://%s:%d (playground at /, API at /v1/completions)", name, options.host, options.port)
        server.run()
    if isinstance(engine.load_exception, UserError):
        raise UserError(f"could not load the model {folder}: {engine.load_exception}") from None
    if engine.load_exception is not None:
        raise engine.load_exception  # a bug: its traceback is the report


def _graceful_server(config, engine, timeout: float):
    """uvicorn's Server, with SIGTERM as a graceful stop that exits 0.

    On SIGTERM the listening socket closes, the engine refuses new requests (503) and gives the running
    and queued ones `timeout` seconds, then ends the rest with an error (a stream's last event says so).
    uvicorn by default re-raises the signal once it has stopped, so the process would die of it (exit
    -15); a deliberate stop is a normal exit here.
    """
    import signal

    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if sig != signal.SIGTERM:
                return super().handle_exit(sig, frame)
            engine.drain(timeout)
            self.should_exit = True

    return GracefulServer(config)
