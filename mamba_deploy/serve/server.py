"""`mamba-deploy serve`: load the engine, listen, serve until SIGINT/SIGTERM, drain, exit
(docs/architecture.md "Serving").

The listening socket is bound and listening before the "serving ... on http://HOST:PORT" line is printed,
so a caller that reads that line (tests, benchmarks; `--port 0` picks a free port) can connect at once.
On SIGINT or SIGTERM the server stops accepting connections, lets in-flight requests run for
`drain_timeout` seconds, then cancels the rest (their streams end with an error event and `[DONE]`),
closes the Scheduler and returns: a drained stop is a normal exit (status 0)."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import threading
from pathlib import Path
from typing import Callable, Optional

from ..errors import MambaDeployError
from .chat import ChatTemplate
from .service import ServeOptions, Service

BACKLOG = 2048


def run_server(path: Optional[str], options: ServeOptions, print_fn: Callable[[str], None] = print) -> None:
    """Serve `path` (an export folder) or `options.random_init` until a signal; returns after the drain."""
    options.validate()
    require_server_packages()
    service = load_service(path, options)
    try:
        sock = listen(options.host, options.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print_fn(f"serving {service.model_name!r} ({service.engine.backend.name} backend, {service.slots} slots) "
                 f"on http://{shown}:{port}")
        _serve(service, sock)
        print_fn("stopped")
    finally:
        service.close()


def require_server_packages() -> None:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MambaDeployError(f"serve needs {' and '.join(missing)}: pip install 'mamba-deploy[serve]'")


def load_service(path: Optional[str], options: ServeOptions) -> Service:
    """The engine (an export folder, or random weights on the native backend) behind a Service."""
    if (path is None) == (options.random_init is None):
        raise MambaDeployError("give an export folder or --random-init NAME (not both)")
    if options.random_init is not None:
        engine, name, chat = _random_engine(options), options.random_init, None
    else:
        from ..runtime import Engine

        engine = Engine.load(path, backend=options.backend, slots=options.max_batch)
        name, chat = Path(path).resolve().name, ChatTemplate.from_export(engine.info.folder)
    return Service(engine, options, options.model_name or name, chat)


def _random_engine(options: ServeOptions):
    """Random weights of a published shape on the native engine (for load tests; no tokenizer)."""
    from ..random_init import PRESETS

    if options.random_init.split("/")[-1].removesuffix("-hf") not in PRESETS:
        raise MambaDeployError(f"--random-init: unknown model {options.random_init!r}; known: {', '.join(PRESETS)}")
    if options.backend not in ("auto", "native"):
        raise MambaDeployError("--random-init runs on the native backend only (--backend native)")
    from ..native import random_engine, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise MambaDeployError(f"--random-init needs the native backend, unavailable here: {reason}")
    import torch

    from ..bench import engine_api

    return engine_api(random_engine(options.random_init, torch.float16, torch.float32, max_batch=options.max_batch))


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening; MambaDeployError when that is impossible."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise MambaDeployError(f"--host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise MambaDeployError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _serve(service: Service, sock: socket.socket) -> None:
    import uvicorn

    from .app import create_app

    config = uvicorn.Config(create_app(service), log_level="warning", access_log=service.options.access_log,
                            lifespan="off", backlog=BACKLOG,
                            timeout_graceful_shutdown=service.options.drain_timeout + 5)
    _draining_server_class()(config, service).run(sockets=[sock])


def _draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's Server, whose shutdown cancels the requests still running after the drain timeout, and
        which does not re-raise the stop signal once it has drained (a drained stop is a clean exit)."""

        def __init__(self, config, service: Service):
            super().__init__(config)
            self.service = service

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def shutdown(self, sockets=None) -> None:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.service.options.drain_timeout, self.service.cancel_all)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

    return DrainingServer

