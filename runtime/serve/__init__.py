"""qk_runtime.serve: `qk-serve`, the runtime over HTTP with an editor page (the `serve` extra).

    qk-serve --bundle engines/default/int8 --port 8000      # then open http://127.0.0.1:8000/

    from qk_runtime.serve import ServeConfig, create_app     # an ASGI app, e.g. for uvicorn
    app = create_app(ServeConfig(max_queue=4))

Modules: `app` (routes, limits, the command line), `worker` (one session, one thread, a bounded
queue), `uploads` (image bytes in and out). FastAPI and uvicorn are imported by `app` only.
"""
from .app import ServeConfig, create_app, main

__all__ = ["ServeConfig", "create_app", "main"]
