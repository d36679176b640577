"""The playground page: static files shipped in the package, served at /playground/, using
only the public API (no build step, nothing fetched from elsewhere)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "playground" / "static"
PREFIX = "/playground"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    """The root sends a browser to the page (API clients never ask for /)."""
    return RedirectResponse("playground/")


@router.get(PREFIX)
async def page_without_slash() -> RedirectResponse:
    # The page's relative links (static/..., and ../ for the API) need the trailing slash.
    return RedirectResponse("playground/")


@router.get(PREFIX + "/")
async def page() -> FileResponse:
    """The page itself."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


def static_files() -> StaticFiles:
    """The page's scripts and styles, mounted at /playground/static."""
    return StaticFiles(directory=STATIC)


def is_public(path: str) -> bool:
    """The page holds no data: a browser may load it before it has a token to send."""
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")
