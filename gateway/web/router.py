"""Serve the web pages, read once at start-up (no build step, no templating): the chat page at ``/``
and the operator dashboard at ``/dashboard``, with their assets under ``/web/``.

The pages hold keys in browser storage, so they must never run script they did not ship: a strict
Content-Security-Policy allows only these same-origin files, and the scripts write model output and
API data with ``textContent`` only (charts are SVG built with DOM calls). The pages themselves are
public; every piece of data comes from the API with the key the user enters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.errors import NotFound

WEB_DIR = Path(__file__).resolve().parent
_ASSETS = {
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_PAGES = {"/": "index.html", "/dashboard": "dashboard.html"}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def build_web_router(web_dir: Path = WEB_DIR) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    assets = {name: ((web_dir / name).read_bytes(), media) for name, media in _ASSETS.items()}
    for path, name in _PAGES.items():
        router.add_api_route(path, _page((web_dir / name).read_bytes()), methods=["GET"])

    @router.get("/web/{name}")
    async def asset(name: str) -> Response:
        if name not in assets:
            raise NotFound(f"no such asset: {name}")
        body, media = assets[name]
        return Response(body, media_type=media, headers=_HEADERS)

    return router


def _page(body: bytes) -> Callable[[], Awaitable[Response]]:
    async def page() -> Response:
        return Response(body, media_type="text/html; charset=utf-8", headers=_HEADERS)

    return page
