"""The HTTP API of the service: calls in progress, warm transfers (start, cancel, state, record),
`/metrics` for Prometheus and `/openapi.json` describing it all.

Why aiohttp (and not FastAPI + uvicorn): the service's event loop also paces every RTP stream
every 20 ms, so the API must run *inside* that loop as a guest, with a start and a stop the
`serve` command controls. aiohttp's `AppRunner`/`TCPSite` is exactly that (bind, port 0 for
tests, graceful cleanup), installs no signal handlers of its own (uvicorn's `Server.serve`
does, and would fight `serve`'s SIGTERM drain), ships its own type hints, and is already in the
dependency tree (httpx is our client). The price is an OpenAPI document written by hand; it
is built from the same pydantic models that parse the requests (`TransferPlan`, `BriefingIn`,
...), so the schemas cannot drift from what the server accepts, and a test checks that every
route is described.

Security:
- Every route except `/openapi.json` and `/healthz` needs ``Authorization: Bearer <token>``,
  compared in constant time (`hmac.compare_digest`). A missing or wrong token is 401 with a
  JSON error that never repeats what was sent.
- The allow-list is always enforced: a named plan comes from the config (already confined to
  the global ``[allow]``), and an inline plan is confined by `confine_plan` (its own list, if
  any, intersected with the global one). A target outside it is 403 and nothing is dialled.
- Request bodies are capped at MAX_BODY bytes.
- An inline plan may not name a file or a folder on the server (``hold_audio.source``,
  ``caller_keys.messages_dir``: every path field of `TransferPlan`, see `config.load.path_keys`):
  it is refused (400, naming the field) before the plan is validated, so a request never makes
  the server read a file (``/dev/zero`` would stall the event loop that paces every call's
  audio; errors would tell "no such file" from "is a directory") nor choose where recordings
  are written. Plans from the config may: the operator wrote them.
- While the service drains (SIGTERM), no transfer is started: 503 ``draining`` with
  Retry-After, as the SIP side answers new calls.

Errors are ``{"error": <code>, "detail": <text>}`` with codes: unauthorized, bad_request,
not_found, unknown_plan, destination_not_allowed, conflict, no_records, draining.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmtransfer.config.errors import dotted
from warmtransfer.config.load import path_keys
from warmtransfer.config.positions import KeyPath
from warmtransfer.server.metrics import CONTENT_TYPE_LATEST, Metrics
from warmtransfer.server.service_api import (
    BriefingIn,
    CallInfo,
    CallNotFound,
    RecordsDisabled,
    ServiceApi,
    TransferConflict,
    TransferInfo,
    TransferNotFound,
    confine_plan,
)
from warmtransfer.transfer.plan import TransferPlan
from warmtransfer.transfer.target import AllowList, DestinationNotAllowed

__all__ = ["MAX_BODY", "HttpApi", "ListenError", "StartTransferRequest", "openapi_document"]

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024
VERSION = "1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The keys of a plan that hold file paths: never taken from a request.
_SERVER_PATHS = path_keys(TransferPlan)


class ListenError(OSError):
    """The API could not listen on its address (in use, not ours, no permission): the message
    names the address and why."""


class StartTransferRequest(BaseModel):
    """Start a warm transfer: a plan by name (from the config) or written inline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: str | TransferPlan = Field(
        description="a plan's name in the config, or a plan (its targets must pass [allow]; "
        "it may not set hold_audio.source nor caller_keys.messages_dir: files on the server)"
    )
    briefing: BriefingIn


class ErrorBody(BaseModel):
    error: str
    detail: str


class CallList(BaseModel):
    calls: list[CallInfo]


def _error(status: int, code: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


def _server_path(plan: Any, key: KeyPath, where: KeyPath = ("plan",)) -> KeyPath | None:
    """Where the inline plan `plan` (JSON data) sets `key` (a path field, "*" any item) to
    anything but null; None if it does not."""
    if not key:
        return where if plan is not None else None
    head, rest = key[0], key[1:]
    if head == "*":
        if not isinstance(plan, dict | list):
            return None
        items = plan.items() if isinstance(plan, dict) else enumerate(plan)
        for name, item in items:
            found = _server_path(item, rest, (*where, name))
            if found is not None:
                return found
        return None
    if isinstance(plan, dict) and head in plan:
        return _server_path(plan[head], rest, (*where, head))
    return None


def _names_server_files(plan: Any) -> str | None:
    """The first path field an inline plan sets, as ``plan.hold_audio.source``; None if none."""
    for key in _SERVER_PATHS:
        found = _server_path(plan, key)
        if found is not None:
            return dotted(found)
    return None


def _json(model: BaseModel | Mapping[str, Any], status: int = 200) -> web.Response:
    text = (
        model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model, default=str)
    )
    return web.Response(text=text, status=status, content_type="application/json")


class HttpApi:
    """The API server. `await start()` binds (port 0 picks a free one: read `port`), `await
    stop()` closes the listener and waits for requests in flight.

    `plans`: the named plans, as the config resolves them (`Config.effective_plans`); `allow`:
    the global allow-list (`Config.allow`). `metrics` and `collect`: `/metrics` renders the
    registry after calling `collect` (e.g. ``lambda: metrics.collect_engine(engine)``).
    `token` is taken without surrounding whitespace (a secret file's trailing newline).
    Set `draining` when the service shuts down: transfers are then refused (503) with
    `retry_after` seconds."""

    def __init__(
        self,
        service: ServiceApi,
        *,
        token: str,
        plans: Mapping[str, TransferPlan],
        allow: AllowList,
        host: str = "127.0.0.1",
        port: int = 8080,
        metrics: Metrics | None = None,
        collect: Callable[[], None] | None = None,
        retry_after: int = 30,
    ) -> None:
        if not token.strip():
            raise ValueError("the HTTP API needs a token ([http] token in the config)")
        self.service = service
        self._token = token.strip().encode()
        self.plans = dict(plans)
        self.allow = allow
        self.host = host
        self._port = port
        self.metrics = metrics
        self._collect = collect
        self.retry_after = retry_after
        self.draining = False
        self.app = self._build_app()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> HttpApi:
        """Bind and serve. Raises `ListenError` naming the address if it cannot bind (the
        runner made for it is cleaned up first: nothing is left behind)."""
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=5.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            reason = exc.strerror or str(exc)
            raise ListenError(f"the HTTP API cannot listen on {self._address}: {reason}") from exc
        self._runner = runner
        server = site._server  # the asyncio server: the only place the bound port is known
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("HTTP API listening on %s:%s", self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def _address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if self.port is not None else self._port}"

    @property
    def url(self) -> str:
        return f"http://{self._address}"

    # -- the app --------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._auth])
        app.router.add_get("/openapi.json", self._openapi)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/calls", self._list_calls)
        app.router.add_post("/v1/calls/{call_id}/transfers", self._start_transfer)
        app.router.add_get("/v1/transfers/{transfer_id}", self._transfer_state)
        app.router.add_post("/v1/transfers/{transfer_id}/cancel", self._cancel_transfer)
        app.router.add_get("/v1/transfers/{transfer_id}/record", self._transfer_record)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/openapi.json", "/healthz"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest on every request, also when the scheme is wrong: no timing hint. Bytes
        # that are not UTF-8 reach us as surrogates (aiohttp decodes with surrogateescape):
        # turned back into those bytes they simply do not match.
        ok = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token)
        if scheme.lower() != "bearer" or not ok:
            return _error(
                401,
                "unauthorized",
                "missing or invalid bearer token",
                **{"WWW-Authenticate": 'Bearer realm="warmtransfer"'},
            )
        return await handler(request)

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return _error(404, "not_found", "metrics are not enabled")
        if self._collect is not None:
            self._collect()
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _list_calls(self, request: web.Request) -> web.Response:
        return _json(CallList(calls=await self.service.list_calls()))

    async def _start_transfer(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if self.draining:
            return _error(
                503,
                "draining",
                "the service is shutting down and starts no transfer; try another instance",
                **{"Retry-After": str(self.retry_after)},
            )
        try:
            data = json.loads(await request.read())
        except ValueError as exc:  # not JSON, or not UTF-8
            return _error(400, "bad_request", f"(body): invalid JSON ({exc})")
        plan = data.get("plan") if isinstance(data, dict) else None
        server_file = _names_server_files(plan) if isinstance(plan, dict) else None
        if server_file is not None:
            return _error(
                400,
                "bad_request",
                f"{server_file}: an inline plan may not name a file or folder on the server; "
                "leave it out, or use a plan of the config (by name)",
            )
        try:
            # The very object checked above is validated (no second parse to disagree with it).
            body = StartTransferRequest.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            return _error(400, "bad_request", problems)
        if isinstance(body.plan, str):
            named = self.plans.get(body.plan)
            if named is None:
                known = ", ".join(sorted(self.plans)) or "(none)"
                return _error(404, "unknown_plan", f"no plan {body.plan!r}; known: {known}")
            plan, inline = named, False
        else:
            plan, inline = body.plan, True
        try:
            plan = confine_plan(plan, self.allow, inline=inline)
            info = await self.service.start_transfer(call_id, plan, body.briefing.to_briefing())
        except DestinationNotAllowed as exc:
            log.warning("refused a transfer on %s: %s", call_id, exc, extra={"call_id": call_id})
            return _error(403, "destination_not_allowed", str(exc))
        except CallNotFound as exc:
            return _error(404, "not_found", str(exc))
        except TransferConflict as exc:
            return _error(409, "conflict", str(exc))
        return _json(info, status=202)

    async def _transfer_state(self, request: web.Request) -> web.Response:
        try:
            info = await self.service.transfer_state(request.match_info["transfer_id"])
        except TransferNotFound as exc:
            return _error(404, "not_found", str(exc))
        return _json(info)

    async def _cancel_transfer(self, request: web.Request) -> web.Response:
        try:
            info = await self.service.cancel_transfer(request.match_info["transfer_id"])
        except TransferNotFound as exc:
            return _error(404, "not_found", str(exc))
        return _json(info, status=202)

    async def _transfer_record(self, request: web.Request) -> web.Response:
        try:
            record = await self.service.transfer_record(request.match_info["transfer_id"])
        except RecordsDisabled as exc:
            return _error(404, "no_records", str(exc))
        except TransferNotFound as exc:
            return _error(404, "not_found", str(exc))
        return _json(record)


# -- OpenAPI ------------------------------------------------------------------------------------


def _schemas() -> dict[str, Any]:
    """Component schemas from the pydantic models themselves (their $defs flattened)."""
    components: dict[str, Any] = {}
    for model in (StartTransferRequest, CallList, TransferInfo, ErrorBody):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


_ERR = _ref("ErrorBody")
_UNAUTHORIZED = _response("missing or invalid bearer token", _ERR)


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route."""
    transfer_id = [_path_param("transfer_id")]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "warmtransfer",
            "version": VERSION,
            "description": "Warm transfers of live calls. Every target must pass the service's "
            "allow-list; inline plans are confined to it.",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/calls": {
                "get": {
                    "operationId": "listCalls",
                    "summary": "Calls in progress (callers and humans dialled)",
                    "responses": {
                        "200": _response("the calls", _ref("CallList")),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/v1/calls/{call_id}/transfers": {
                "post": {
                    "operationId": "startTransfer",
                    "summary": "Start a warm transfer of this caller, with a named or inline plan",
                    "parameters": [_path_param("call_id")],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("StartTransferRequest")}},
                    },
                    "responses": {
                        "202": _response("started", _ref("TransferInfo")),
                        "400": _response(
                            "invalid body or plan, or an inline plan naming a file on the "
                            "server (hold_audio.source, caller_keys.messages_dir)",
                            _ERR,
                        ),
                        "401": _UNAUTHORIZED,
                        "403": _response("a target is outside the allow-list", _ERR),
                        "404": _response("no such call or plan", _ERR),
                        "409": _response("the call has a transfer running", _ERR),
                        "503": {
                            **_response("the service is draining (shutting down)", _ERR),
                            "headers": {
                                "Retry-After": {
                                    "description": "seconds before trying again",
                                    "schema": {"type": "integer"},
                                }
                            },
                        },
                    },
                }
            },
            "/v1/transfers/{transfer_id}": {
                "get": {
                    "operationId": "getTransfer",
                    "summary": "A transfer's state, timeline and outcome",
                    "parameters": transfer_id,
                    "responses": {
                        "200": _response("the transfer", _ref("TransferInfo")),
                        "401": _UNAUTHORIZED,
                        "404": _response("unknown transfer", _ERR),
                    },
                }
            },
            "/v1/transfers/{transfer_id}/cancel": {
                "post": {
                    "operationId": "cancelTransfer",
                    "summary": "Cancel a transfer: the caller goes back to the AI",
                    "parameters": transfer_id,
                    "responses": {
                        "202": _response("cancelling", _ref("TransferInfo")),
                        "401": _UNAUTHORIZED,
                        "404": _response("unknown transfer", _ERR),
                    },
                }
            },
            "/v1/transfers/{transfer_id}/record": {
                "get": {
                    "operationId": "getTransferRecord",
                    "summary": "The stored record of a transfer (records store)",
                    "parameters": transfer_id,
                    "responses": {
                        "200": _response("the record", {"type": "object"}),
                        "401": _UNAUTHORIZED,
                        "404": _response("unknown transfer, or no records store", _ERR),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text exposition",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness (no token needed)",
                    "security": [],
                    "responses": {"200": _response("alive", {"type": "object"})},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no token needed)",
                    "security": [],
                    "responses": {"200": _response("OpenAPI 3.1", {"type": "object"})},
                }
            },
        },
    }
