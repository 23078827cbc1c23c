"""`gpt2kit serve`: the model behind an OpenAI-compatible API and a web playground."""
from __future__ import annotations

import logging
import os

from ..errors import UserError

log = logging.getLogger("gpt2kit")


def serve(model: str | None = None, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "auto", dtype: str = "auto", model_name: str | None = None, max_batch: int = 16,
          max_queue: int = 64, max_tokens_limit: int = 1024, offline: bool | None = None) -> None:
    """Serve until interrupted. The model loads in the background; /health says 503 until it is in."""
    import uvicorn

    from ..hub import resolve_model_path
    from ..lm import load
    from .api import create_app
    from .engine import Engine

    folder = resolve_model_path(model, offline=offline)  # fail fast, before binding, on a bad path
    api_key = api_key or os.environ.get("GPT2KIT_API_KEY") or None
    name = model_name or (os.path.basename(os.path.normpath(str(model))) if model else "gpt2kit-bundled")
    server: uvicorn.Server | None = None

    def stop(error: str) -> None:
        # A model that cannot load is the user's to fix: stop serving rather than answer 503 forever.
        if server is not None:
            server.should_exit = True

    engine = Engine(lambda: load(folder, device=device, dtype=dtype), max_batch=max_batch, max_queue=max_queue,
                    on_load_error=stop)
    app = create_app(engine, model_name=name, api_key=api_key, max_tokens_limit=max_tokens_limit)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this machine can use the model", host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    if engine.load_error is None:
        log.info("serving %s on http://%s:%d (playground at /, API at /v1/completions)", name, host, port)
        server.run()
    if engine.load_error is not None:
        raise UserError(f"could not load the model {folder}: {engine.load_error}")
