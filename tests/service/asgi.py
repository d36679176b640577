"""A synchronous test client over the ASGI app, lifespan included (shared by the API tests)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import numpy as np

from service.app import create_app
from service.config import Settings


class Client:
    """A synchronous facade over an ASGI app with its lifespan running on a private loop."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = create_app(settings)
        self._ctx = self.app.router.lifespan_context(self.app)
        self.loop.run_until_complete(self._ctx.__aenter__())
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kw))

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def post_npy(self, url: str, arr: np.ndarray) -> httpx.Response:
        """POST `arr` as an application/x-npy body."""
        buf = io.BytesIO()
        np.save(buf, arr)
        return self.post(url, content=buf.getvalue(), headers={"content-type": "application/x-npy"})

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.run_until_complete(self._ctx.__aexit__(None, None, None))
        self.loop.close()
