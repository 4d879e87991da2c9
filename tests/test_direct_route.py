"""DirectRoute: the endpoint gets the Request and its Response goes out as is; the app's exception
handlers still apply; the route stays in the OpenAPI document; misuse fails when the route is built."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient

from gateway.direct_route import DirectRoute


def _app() -> FastAPI:
    router = APIRouter()

    async def echo(request: Request) -> Response:
        if request.headers.get("x-fail"):
            raise HTTPException(418, "asked to fail")
        return Response(await request.body(), 201, {"x-seen": request.url.path}, media_type="text/plain")

    router.add_api_route("/echo", echo, methods=["POST"], status_code=201, route_class_override=DirectRoute)
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def shaped(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.detail}}, exc.status_code)

    app.include_router(router)
    return app


def test_the_endpoints_response_goes_out_unchanged() -> None:
    with TestClient(_app()) as client:
        resp = client.post("/echo", content=b"raw bytes, not JSON")
    assert (resp.status_code, resp.content, resp.headers["x-seen"]) == (201, b"raw bytes, not JSON", "/echo")


def test_exceptions_still_reach_the_apps_handlers() -> None:
    with TestClient(_app()) as client:
        resp = client.post("/echo", headers={"x-fail": "1"})
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
