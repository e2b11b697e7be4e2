"""Starting the predictor: KServe's ModelServer, with the openpi websocket on the same port.

KServe routes one HTTP port per predictor container; the websocket route is added to KServe's
own FastAPI app before the server starts, so both protocols share it (websockets arrive as
HTTP upgrades).
"""

from __future__ import annotations

from typing import Any

from wamfleet.serving.predictor import WAMPredictor
from wamfleet.serving.websocket import policy_websocket_router


def serve(
    predictor: WAMPredictor, *, host: str = "0.0.0.0", port: int = 8080, api_key: str | None = None
) -> None:
    """Loads the policy (readiness comes after warm-up), then serves until SIGTERM/SIGINT."""
    from kserve import ModelServer
    from kserve.model_server import app
    from kserve.protocol.rest import server as rest

    predictor.load()

    def engine() -> Any:
        assert predictor.engine is not None
        return predictor.engine

    app.include_router(policy_websocket_router(engine, api_key))
    original_init = rest.RESTServer.__init__

    def bind_host(self: Any, *args: Any, **kwargs: Any) -> None:
        # KServe 0.21 hard-codes 0.0.0.0; tests and single machines bind loopback.
        original_init(self, *args, **kwargs)
        self.config.host = host

    rest.RESTServer.__init__ = bind_host
    try:
        ModelServer(http_port=port, enable_grpc=False, workers=1).start([predictor])
    finally:
        rest.RESTServer.__init__ = original_init
