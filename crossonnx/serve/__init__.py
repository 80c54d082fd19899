"""`crossonnx serve`: an HTTP rerank service with dynamic batching (needs the `serve` extra).

Modules: ``cli`` (argparse only), ``limits`` (ServeLimits), ``schema`` (request bodies -> typed requests or
ApiError), ``body`` (JSON content type, body size, finishing bodies an early answer left unread), ``security`` (the
API key), ``batcher`` (DynamicBatcher: bounded pair queue, one inference thread; no web framework), ``metrics``
(per-app Prometheus registry and middleware), ``app`` (the Starlette app: ``create_app(encoder, limits)``) and
``server`` (uvicorn with a graceful drain on SIGTERM/SIGINT).
"""
