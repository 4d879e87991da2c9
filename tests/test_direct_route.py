"""DirectRoute: the endpoint gets the Request and its Response goes out as is; the app's exception
handlers still apply; the route stays in the OpenAPI document; misuse fails when the route is built.

DirectRoutesFirst serves those routes past the router (the router's ``endpoint`` key is never set in
the scope) with the same answers, handlers and outer middleware; anything else goes on to the router."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient

from gateway.direct_route import DirectRoute, DirectRoutesFirst


class Boom(Exception):
    pass


def _app(*, dispatch: bool = False) -> FastAPI:
    router = APIRouter()

    async def echo(request: Request) -> Response:
        if request.headers.get("x-fail") == "http":
            raise HTTPException(418, "asked to fail")
        if request.headers.get("x-fail") == "teapot":
            raise HTTPException(409, "by status")
        if request.headers.get("x-fail") == "boom":
            raise Boom
        routed = "endpoint" in request.scope  # the router puts the matched endpoint in the scope
        headers = {"x-seen": request.url.path, "x-routed": str(routed).lower()}
        return Response(await request.body(), 201, headers, media_type="text/plain")

    router.add_api_route("/echo", echo, methods=["POST"], status_code=201, route_class_override=DirectRoute)
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def shaped(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.detail}}, exc.status_code)

    @app.exception_handler(409)
    def by_status(_: Request, exc: Exception) -> JSONResponse:  # sync: Starlette runs it in a thread
        return JSONResponse({"error": {"status": 409}}, 409)

    @app.exception_handler(Exception)
    async def fallback(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"message": "internal"}}, 500)

    app.include_router(router)
    if dispatch:
        app.add_middleware(DirectRoutesFirst, gateway=app)

        @app.middleware("http")
        async def outer(request: Request, call_next):  # type: ignore[no-untyped-def]
            response = await call_next(request)
            response.headers["x-outer"] = "yes"
            return response

    return app


@pytest.mark.parametrize("dispatch", [False, True])
@pytest.mark.parametrize(
    ("fail", "status", "body"),
    [("http", 418, {"error": {"message": "asked to fail"}}), ("teapot", 409, {"error": {"status": 409}}),
     ("boom", 500, {"error": {"message": "internal"}})],
)  # fmt: skip
def test_both_ways_map_exceptions_alike(dispatch: bool, fail: str, status: int, body: dict[str, object]) -> None:
    with TestClient(_app(dispatch=dispatch), raise_server_exceptions=False) as client:
        resp = client.post("/echo", headers={"x-fail": fail})
    assert (resp.status_code, resp.json()) == (status, body)


def test_the_dispatcher_serves_direct_routes_past_the_router_inside_outer_middleware() -> None:
    with TestClient(_app(dispatch=True)) as client:
        resp = client.post("/echo", content=b"hi")
        wrong_method = client.get("/echo")
        missing = client.post("/nowhere")
    assert (resp.status_code, resp.content, resp.headers["x-routed"], resp.headers["x-outer"]) == (
        201, b"hi", "false", "yes"
    )  # fmt: skip
    assert (wrong_method.status_code, missing.status_code) == (405, 404)  # the router's answers, as before


def test_without_the_dispatcher_the_router_serves_them() -> None:
    with TestClient(_app()) as client:
        assert client.post("/echo").headers["x-routed"] == "true"


def test_the_endpoints_response_goes_out_unchanged() -> None:
    with TestClient(_app()) as client:
        resp = client.post("/echo", content=b"raw bytes, not JSON")
    assert (resp.status_code, resp.content, resp.headers["x-seen"]) == (201, b"raw bytes, not JSON", "/echo")


def test_exceptions_still_reach_the_apps_handlers() -> None:
    with TestClient(_app()) as client:
        resp = client.post("/echo", headers={"x-fail": "http"})
    assert resp.status_code == 418
    assert resp.json() == {"error": {"message": "asked to fail"}}


def test_the_route_is_in_the_openapi_document() -> None:
    with TestClient(_app()) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "201" in paths["/echo"]["post"]["responses"]


@pytest.mark.parametrize("kind", ["two-params", "sync", "dependencies"])
def test_an_endpoint_it_cannot_call_directly_is_refused(kind: str) -> None:
    async def two(request: Request, extra: int) -> Response:  # pragma: no cover - never called
        return Response()

    def sync(request: Request) -> Response:  # pragma: no cover - never called
        return Response()

    async def one(request: Request) -> Response:  # pragma: no cover - never called
        return Response()

    cases = {"two-params": (two, None), "sync": (sync, None), "dependencies": (one, [Depends(lambda: None)])}
    endpoint, deps = cases[kind]
    router = APIRouter()
    with pytest.raises(TypeError, match="DirectRoute /x"):
        router.add_api_route("/x", endpoint, methods=["POST"], route_class_override=DirectRoute, dependencies=deps)
