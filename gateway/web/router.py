"""Serve the chat page: ``/`` and its two assets, read once at start-up (no build step, no templating).

The page holds the chat key in localStorage, so it must never run script it did not ship: a strict
Content-Security-Policy allows only these same-origin files, and the script writes model output
with ``textContent`` only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from gateway.errors import NotFound

WEB_DIR = Path(__file__).resolve().parent
_ASSETS = {
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def build_web_router(web_dir: Path = WEB_DIR) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    page = (web_dir / "index.html").read_bytes()
    assets = {name: ((web_dir / name).read_bytes(), media) for name, media in _ASSETS.items()}

    @router.get("/")
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get("/web/{name}")
    async def asset(name: str) -> Response:
        if name not in assets:
            raise NotFound(f"no such asset: {name}")
        body, media = assets[name]
        return Response(body, media_type=media, headers=_HEADERS)

    return router
