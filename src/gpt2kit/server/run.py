"""`serve`: bind the address, find every model and check their memory, then load, serve, and drain.

Everything that can be refused is refused before anything loads: a bad address, template, path or memory
limit is one line and no download or load has started. A model that then fails to load stops the server.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import UserError
from ..options import ServeOptions

if TYPE_CHECKING:
    from .chat import ChatTemplate
    from .models import Models, ModelSpec

log = logging.getLogger("gpt2kit")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SHUTDOWN_GRACE = 5.0  # seconds after the drain deadline for the last answers (error events) to be sent
BACKLOG = 2048  # connections the kernel queues before they are accepted (uvicorn's default)
STOP_POLL = 0.05  # seconds between looks at the engines while they stop


def serve(model: str | Path | Sequence[str | Path | None] | None = None, options: ServeOptions | None = None) -> None:
    """Serve until interrupted: one model, or several (a list; `ID=PATH` names one's id), each with its own engine.

    The address is bound first, then every model is found, and their expected memory checked against
    --max-memory (else the memory available), before anything loads. The models load in the background;
    /health says 503 until all are in. A model that cannot load stops the server: a UserError (bad files)
    as that error, anything else (a bug) with its traceback.
    """
    from ..hub import resolve_model_path
    from .chat import ChatTemplate
    from .models import check_fit, expected_bytes, memory_limit, parse_specs

    options = options or ServeOptions()
    specs = parse_specs([model] if model is None or isinstance(model, (str, Path)) else model, options.served_name)
    limit = memory_limit(options)  # a bad --max-memory: stop before any download
    chat_template = ChatTemplate(options.chat_template, tuple(options.chat_stop))  # a bad template: stop before binding
    # A port in use or a host that is not this machine's is found before a download or a load, not after.
    sock = bind(options.host, options.port)
    try:
        # Fail fast, before loading, on a bad path or models that do not fit.
        folders = [resolve_model_path(s.source, offline=options.offline) for s in specs]
        needs = [expected_bytes(folder, options) for folder in folders]
        check_fit({s.id: n for s, n in zip(specs, needs)}, limit, options)
        # The environment is read here, at call time, never at import.
        options = dataclasses.replace(options, api_key=options.api_key or os.environ.get("GPT2KIT_API_KEY") or None)
        _run(sock, specs, folders, needs, options, chat_template)
    finally:
        sock.close()


def _run(
    sock: socket.socket,
    specs: list[ModelSpec],
    folders: list[Path],
    needs: list[int],
    options: ServeOptions,
    chat_template: ChatTemplate,
) -> None:
    """Start the engines, serve on `sock` until stopped, then stop the engines before returning."""
    import uvicorn

    from .api import create_app
    from .models import start_engines

    server: uvicorn.Server | None = None

    def stop(error: BaseException) -> None:
        # A model that cannot load is not going to: stop serving rather than answer 503 forever.
        if server is not None:
            server.should_exit = True

    # Listening before any engine starts: a port another server took since the bind fails here, with no
    # model loading to wait for before the one line.
    listen(sock, options.host, options.port)
    models = start_engines(specs, folders, needs, options, on_load_error=stop)
    try:
        app = create_app(models, options=options, chat_template=chat_template)
        if options.host not in LOCAL_HOSTS and not options.api_key:
            log.warning(
                "serving on %s without --api-key: anyone who can reach this machine can use the model", options.host
            )
        # uvicorn's own graceful shutdown is the backstop; the engines' drain answers every request first.
        config = uvicorn.Config(
            app,
            host=options.host,
            port=options.port,
            log_level="warning",
            timeout_graceful_shutdown=options.shutdown_timeout + SHUTDOWN_GRACE,
        )
        server = _graceful_server(config, models, options.shutdown_timeout)
        if models.load_exception is None:
            log.info(
                "serving %s on %s (playground at /, API at /v1/completions)",
                ", ".join(s.id for s in specs),
                url_of(sock, options.host),
            )
            server.run(sockets=[sock])
    finally:
        _stop_engines(models)
    _raise_load_error(models, dict(zip((s.id for s in specs), folders)))


# --- the listening socket ------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: a free one), or one line saying why not and what to do.

    Bound before anything loads, so a port in use or a host that is not this machine's stops `serve` at
    once; uvicorn's own bind would find out after the models started loading, and exit from under them."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(
            f"cannot listen on host {host}: {e.strerror}; pass --host 127.0.0.1 (this machine only), "
            f"0.0.0.0 (every interface) or an address of this machine"
        ) from None
    # IPv4 first, as uvicorn's own bind did: "localhost" keeps meaning 127.0.0.1 where it also names ::1
    family, kind, proto, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    # uvicorn's setting: a port whose last server just stopped (connections in TIME_WAIT) can be bound again
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise address_error(e, host, port) from None
    return sock


def listen(sock: socket.socket, host: str, port: int) -> None:
    """Start listening on the bound `sock` (it can still fail: another server may have taken the port)."""
    try:
        sock.listen(BACKLOG)
    except OSError as e:
        raise address_error(e, host, port) from None


def address_error(e: OSError, host: str, port: int) -> UserError:
    """Why host:port cannot be listened on, and what to pass instead."""
    if e.errno == errno.EADDRINUSE:
        return UserError(
            f"port {port} on {host} is in use (another server?); pass --port N for another port, "
            f"or --port 0 for any free one"
        )
    if e.errno == errno.EACCES:
        return UserError(
            f"cannot listen on port {port} on {host}: permission denied (ports below 1024 need "
            f"privileges); pass --port 1024 or higher, e.g. --port {ServeOptions.port}"
        )
    if e.errno == errno.EADDRNOTAVAIL:
        return UserError(
            f"cannot listen on host {host}: it is not an address of this machine; pass --host "
            f"127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of this machine's addresses"
        )
    return UserError(f"cannot listen on {host} port {port}: {e.strerror or e}; pass another --host or --port")


def url_of(sock: socket.socket, host: str) -> str:
    """The URL clients use: the host as given, the port actually bound (--port 0 lets the system choose)."""
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _stop_engines(models: Models) -> None:
    """Leave no engine thread inside PyTorch when the process exits: exiting while one is still loading a
    model aborts the interpreter ("terminate called without an active exception", exit 134). Waits for
    each load to finish, then cancels whatever still runs and waits (briefly) for the engines to go idle."""
    engines = [m.engine for m in models]
    if not all(e.ready or e.load_exception is not None for e in engines):
        log.info("stopping: waiting for the models to finish loading")
    while not all(e.ready or e.load_exception is not None for e in engines):
        time.sleep(STOP_POLL)
    for e in engines:
        e.drain(0)
    deadline = time.monotonic() + SHUTDOWN_GRACE
    while time.monotonic() < deadline and not all(e.idle for e in engines if e.ready):
        time.sleep(STOP_POLL)


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
