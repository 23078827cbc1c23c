"""`gpt2kit serve`: the model behind an OpenAI-compatible API and a web playground.

run.py          serve(): bind, check, load the models, serve until stopped, drain on SIGTERM
api.py          the HTTP routes (thin) and errors in OpenAI's shape
middleware.py   what wraps every route: body size, the API key, outcome counts, the OpenAPI fix-up
protocol.py     the request and answer bodies (pydantic), which the OpenAPI schema is made from
completions.py  a request turned into generation jobs (best_of, logit_bias), results in /v1/completions' layout
chat.py         /v1/chat/completions: the chat template (Jinja, sandboxed) and the chat layout
tokens.py       /tokenize and /detokenize
metrics.py      /metrics in Prometheus' text format
engine.py       the worker thread that owns the model and decodes queued requests in shared batches
models.py       several models in one server: ids, the memory check, one engine each
static/         the playground
"""

from .run import BACKLOG, LOCAL_HOSTS, SHUTDOWN_GRACE, STOP_POLL, address_error, bind, listen, serve, url_of

__all__ = [
    "serve",
    "bind",
    "listen",
    "address_error",
    "url_of",
    "LOCAL_HOSTS",
    "SHUTDOWN_GRACE",
    "BACKLOG",
    "STOP_POLL",
]
