"""`gpt2kit serve`: the model behind an OpenAI-compatible API and a web playground.

    api.py          the HTTP routes (thin): authentication, limits, errors in OpenAI's shape
    protocol.py     the request and answer bodies (pydantic), which the OpenAPI schema is made from
    completions.py  a request turned into generation jobs (best_of, logit_bias), results in /v1/completions' layout
    chat.py         /v1/chat/completions: the chat template (Jinja, sandboxed) and the chat layout
    tokens.py       /tokenize and /detokenize
    metrics.py      /metrics in Prometheus' text format
    engine.py       the worker thread that owns the model and decodes queued requests in shared batches
    models.py       several models in one server: ids, the memory check, one engine each
    static/         the playground
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..options import ServeOptions

log = logging.getLogger("gpt2kit")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_GRACE = 5.0  # seconds after the drain deadline for the last answers (error events) to be sent


def serve(model: str | Path | Sequence[str | Path | None] | None = None, options: ServeOptions | None = None) -> None:
    """Serve until interrupted: one model, or several (a list; `ID=PATH` names one's id), each with its own engine.

    Every model is found, and their expected memory checked against --max-memory (else the memory
    available), before anything loads or binds. The models load in the background; /health says 503
    until all are in. A model that cannot load stops the server: a UserError (bad files) as that
    error, anything else (a bug) with its traceback.
    """
    import uvicorn

    from ..hub import resolve_model_path
    from .api import create_app
    from .chat import ChatTemplate
    from .models import check_fit, expected_bytes, memory_limit, parse_specs, start_engines

    options = options or ServeOptions()
    specs = parse_specs([model] if model is None or isinstance(model, (str, Path)) else model, options.served_name)
    limit = memory_limit(options)  # a bad --max-memory: stop before any download
    # Fail fast, before binding or loading, on a bad path or models that do not fit.
    folders = [resolve_model_path(s.source, offline=options.offline) for s in specs]
    needs = [expected_bytes(folder, options) for folder in folders]
    check_fit({s.id: n for s, n in zip(specs, needs)}, limit, options)
    # The environment is read here, at call time, never at import.
    options = dataclasses.replace(options, api_key=options.api_key or os.environ.get("GPT2KIT_API_KEY") or None)
    chat_template = ChatTemplate(options.chat_template, tuple(options.chat_stop))  # a bad template: stop before binding
    server: uvicorn.Server | None = None

    def stop(error: BaseException) -> None:
        # A model that cannot load is not going to: stop serving rather than answer 503 forever.
        if server is not None:
            server.should_exit = True

    models = start_engines(specs, folders, needs, options, on_load_error=stop)
    app = create_app(models, options=options, chat_template=chat_template)
    if options.host not in LOCAL_HOSTS and not options.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this machine can use the model", options.host)
    # uvicorn's own graceful shutdown is the backstop; the engines' drain answers every request first.
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning",
                            timeout_graceful_shutdown=options.shutdown_timeout + SHUTDOWN_GRACE)
    server = _graceful_server(config, models, options.shutdown_timeout)
    if models.load_exception is None:
        log.info("serving %s on http://%s:%d (playground at /, API at /v1/completions)",
                 ", ".join(s.id for s in specs), options.host, options.port)
        server.run()
    _raise_load_error(models, dict(zip((s.id for s in specs), folders)))


def _raise_load_error(models, folders: dict) -> None:
    """After the server stopped: the first model that could not load, as serve's own error."""
    failed = next((m for m in models if m.engine.load_exception is not None), None)
    if failed is None:
        return
    if isinstance(failed.engine.load_exception, UserError):
        raise UserError(f"could not load the model {folders[failed.id]}: {failed.engine.load_exception}") from None
    raise failed.engine.load_exception  # a bug: its traceback is the report


def _graceful_server(config, models, timeout: float):
    """uvicorn's Server, with SIGTERM as a graceful stop that exits 0.

    On SIGTERM the listening socket closes, every engine refuses new requests (503) and gives the running
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
            models.drain(timeout)
            self.should_exit = True

    return GracefulServer(config)
