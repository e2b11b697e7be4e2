"""Starting the predictor: KServe's ModelServer, with the openpi websocket on the same port.

KServe routes one HTTP port per predictor container; KServe's routes and the websocket route
go on one FastAPI app of ours (`PolicyRESTServer`, not KServe's module-level app, so nothing of
KServe's changes for other servers in the process), and both protocols share its port
(websockets arrive as HTTP upgrades).

The app is gated to what this server supports (`PolicyGate`, in front of everything):
- routes: the health, readiness, metadata and metrics routes KServe probes and Prometheus use,
  v2 `POST /v2/models/<name>/infer`, and the websocket at "/". KServe's v1 routes, model
  versions, the repository load/unload routes and the OpenAPI pages are refused (404);
- with an API key, inference (v2 infer, the websocket) needs `Authorization: Api-Key <key>`
  (401 otherwise, a 1008 close for a websocket); probes, metadata and metrics need none;
- errors: a malformed body is a 422 naming where it is malformed, bad input a 400 naming the
  input, non-finite actions a 500 saying so, and any other fault a generic 500 (logged here,
  its text never sent);
- one message-size setting: uvicorn's `ws_max_size` and the websocket handler's limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve.protocol.rest.server import RESTServer
from starlette.types import ASGIApp, Receive, Scope, Send

from wamfleet.platform.contracts.protocol import MAX_MESSAGE_BYTES
from wamfleet.serving.engine import Engine, NonFiniteActions
from wamfleet.serving.predictor import WAMPredictor
from wamfleet.serving.websocket import api_key_ok, policy_websocket_router

log = logging.getLogger(__name__)
INTERNAL_ERROR = "internal server error; the request was not served"

# What this server answers; anything else KServe registered (its v1 routes, model versions,
# repository load/unload, OpenAPI pages, ...) is refused with a 404 before it runs.
PUBLIC_PATH = re.compile(r"/|/metrics|/v2|/v2/health/(live|ready)|/v2/models(/[^/]+(/ready)?)?")  # GET
INFER_PATH = re.compile(r"/v2/models/[^/]+/infer")  # POST
WEBSOCKET_PATH = "/"


class PolicyGate:
    """The ASGI gate in front of KServe's app: only supported routes pass, and inference needs
    the key. Probes, metadata and metrics (GET on a public path) need none: probes carry none.
    A middleware rather than per-route dependencies, so a route nobody listed is refused."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope.get("method", "")
        if kind == "http" and method in ("GET", "HEAD") and PUBLIC_PATH.fullmatch(path):
            await self.app(scope, receive, send)
            return
        known = (
            path == WEBSOCKET_PATH if kind == "websocket" else method == "POST" and INFER_PATH.fullmatch(path)
        )
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        if known and api_key_ok(header, self.api_key):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await receive()  # websocket.connect; closing before accept answers the handshake 403
            reason = "missing or wrong Api-Key" if known else "no such endpoint"
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return
        if known:
            response = JSONResponse(
                {"error": "missing or wrong Api-Key"},
                status_code=401,
                headers={"WWW-Authenticate": "Api-Key"},
            )
        else:
            response = JSONResponse({"error": f"not found: {method} {path[:200]}"}, status_code=404)
        await response(scope, receive, send)


async def _malformed(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where the body is malformed, without echoing it (it may be megabytes, or NaN)."""
    assert isinstance(exc, RequestValidationError)
    places = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ()) if part != "bytes"]
        if len(loc) != len(error.get("loc", ())):
            continue  # the raw-bytes alternative of the body union: the JSON one says more
        if error.get("type") == "json_invalid":
            places.append("body: not valid JSON")
            continue
        where = ".".join(p for p in loc if p != "InferenceRequest") or "body"
        places.append(f"{where}: {str(error.get('msg', 'invalid'))[:200]}")
    return JSONResponse({"error": "; ".join(places[:3]) or "body: malformed"}, status_code=422)


async def _non_finite(request: Request, exc: Exception) -> JSONResponse:
    """The model's fault, not the robot's: a 500 that says so; the robot holds its safe action."""
    log.warning("infer: %s", exc)
    return JSONResponse({"error": str(exc)}, status_code=500)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    """A server fault: logged with its traceback here, a generic message to the client."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)


def _client_decode_errors(decode: Callable[..., Any]) -> Callable[..., Any]:
    """KServe's body decoder, with its parsing failures (KeyError, ValueError, ... on a malformed
    binary-extension body) answered as a 400 naming the body instead of a 500."""
    from kserve.errors import InvalidInput

    @functools.wraps(decode)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return decode(*args, **kwargs)
        except InvalidInput as exc:  # KServe's own words (FP16 as JSON, a missing header ...)
            raise InvalidInput(f"body: {str(exc)[:300]}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the body was bad
            log.info("infer: undecodable body (%s)", type(exc).__name__)
            raise InvalidInput("body: not a valid v2 inference request") from None

    return wrapped


def configure_app(
    app: FastAPI,
    rest: Any,
    engine: Callable[[], Engine],
    *,
    api_key: str | None,
    max_message_bytes: int,
) -> None:
    """What KServe's RESTServer.create_application does to `app`, then trimmed and guarded."""
    from kserve.errors import InferenceError

    rest._add_middlewares(app)
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    rest.dataplane.decode = _client_decode_errors(rest.dataplane.decode)
    app.include_router(policy_websocket_router(engine, api_key, max_message_bytes))
    app.add_exception_handler(RequestValidationError, _malformed)
    app.add_exception_handler(NonFiniteActions, _non_finite)
    app.add_exception_handler(InferenceError, _internal)
    app.add_exception_handler(Exception, _internal)  # replaces KServe's, which echoes the exception
    app.add_middleware(PolicyGate, api_key=api_key)  # outermost: before anything else runs


def _engine_of(predictor: WAMPredictor) -> Callable[[], Engine]:
    def engine() -> Engine:
        assert predictor.engine is not None
        return predictor.engine

    return engine


def _new_app() -> FastAPI:
    """An app of our own, made as KServe makes its module-level one (ORJSON responses, as `serve`
    always answered), so the gate and routes added to it never reach `kserve.model_server.app`,
    which every other KServe server in the process serves."""
    from fastapi.responses import ORJSONResponse

    return FastAPI(docs_url=None, redoc_url=None, default_response_class=ORJSONResponse)


def policy_app(
    predictor: WAMPredictor, *, api_key: str | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> FastAPI:
    """A fresh app with exactly what `serve` serves, for a loaded predictor (tests, embedding)."""
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension

    repository = ModelRepository()
    repository.update(predictor)
    rest = RESTServer(
        "kserve.model_server:app",
        DataPlane(model_registry=repository),
        ModelRepositoryExtension(model_registry=repository),
        http_port=0,
    )
    app = FastAPI(docs_url=None, redoc_url=None)
    configure_app(app, rest, _engine_of(predictor), api_key=api_key, max_message_bytes=max_message_bytes)
    return app


class PolicyRESTServer(RESTServer):
    """KServe's RESTServer with an app of our own, our bind address and websocket settings.

    A subclass because KServe 0.21 offers no parameter for these: RESTServer.__init__ builds
    uvicorn's config with host 0.0.0.0 and uvicorn's websocket defaults, and create_application
    fills KServe's module-level app. Overriding both here (instead of patching RESTServer, as
    before) leaves every other KServe server in the process as KServe made it.
    """

    def __init__(
        self,
        data_plane: Any,
        model_repository_extension: Any,
        http_port: int,
        *,
        engine: Callable[[], Engine],
        host: str,
        api_key: str | None,
        max_message_bytes: int,
        **kwargs: Any,
    ) -> None:
        self.app = _new_app()
        super().__init__(self.app, data_plane, model_repository_extension, http_port, **kwargs)
        self.policy_engine = engine
        self.api_key = api_key
        self.max_message_bytes = max_message_bytes
        self.config.host = host  # KServe 0.21 hard-codes 0.0.0.0; tests and single machines bind loopback
        self.config.ws_max_size = max_message_bytes  # uvicorn's default (16 MiB) would close 1009 first
        self.config.ws_per_message_deflate = False  # as openpi's server: frames hardly compress

    def create_application(self) -> None:
        configure_app(
            self.app, self, self.policy_engine, api_key=self.api_key, max_message_bytes=self.max_message_bytes
        )


class PolicyModelServer(ModelServer):
    """KServe's ModelServer, serving REST through a `PolicyRESTServer`, in this one process.

    A subclass because ModelServer.start (KServe 0.21) builds its RESTServer inline, naming the
    class; `start` here is its one-worker, REST-only path with `rest_server` in its place.
    """

    def __init__(self, rest_server: Callable[..., PolicyRESTServer], **kwargs: Any) -> None:
        super().__init__(workers=1, enable_grpc=False, **kwargs)
        self.rest_server = rest_server

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = self.rest_server(
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def serve(
    predictor: WAMPredictor,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    api_key: str | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> None:
    """Loads the policy (readiness comes after warm-up), then serves until SIGTERM/SIGINT."""
    predictor.load()
    rest_server = functools.partial(
        PolicyRESTServer,
        engine=_engine_of(predictor),
        host=host,
        api_key=api_key,
        max_message_bytes=max_message_bytes,
    )
    loop_policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_fast_loop_policy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # KServe's setup_event_loop reads the current one
    try:
        PolicyModelServer(rest_server, http_port=port).start([predictor])
    finally:
        asyncio.set_event_loop_policy(loop_policy)


def _fast_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    """uvloop, as uvicorn's `loop="auto"` would pick: KServe's single-process server calls
    asyncio.run itself, so uvicorn's loop setting never applies and the loop would be asyncio's
    own. uvloop takes ~0.4 ms off each websocket round trip (benchmarks/serving.py). It is
    installed with the `serve` extra; without it (Windows) the default loop serves."""
    try:
        import uvloop
    except ImportError:
        return asyncio.DefaultEventLoopPolicy()
    policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
    return policy
