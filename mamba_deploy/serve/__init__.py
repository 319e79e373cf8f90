"""An OpenAI-compatible HTTP server on the Scheduler (docs/architecture.md "Serving").

    from mamba_deploy.serve import ServeOptions, run_server
    run_server("out/mamba-tiny-pydoc", ServeOptions(port=8000, api_key="..."))

`create_app(service)` (in `serve.app`) is the ASGI app itself; fastapi and uvicorn (the `serve` extra)
are imported only when serving.
"""
from .service import ServeOptions, Service
from .server import load_service, run_server

__all__ = ["ServeOptions", "Service", "load_service", "run_server"]
