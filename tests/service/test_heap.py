"""The serving process's heap is frozen once models are loaded (no full collections walk
it under load), collectable again at shutdown, and a frozen cycle is freed by the next
settle."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from service import heap
from service.config import Settings
from tests.service.asgi import Client


class Node:
    """An object that can sit in a reference cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_frozen_cycle_waits_for_the_next_settle() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the cyclic collector frees it
    gone = weakref.ref(a)
    try:
        heap.settle()
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: skipped by collections
        heap.settle()
        assert gone() is None  # unfrozen, collected, the rest frozen again
    finally:
        heap.release()


def test_the_server_freezes_its_heap_while_it_serves(tiny_store: Path) -> None:
    heap.release()
    client = Client(Settings(model_store=tiny_store))
    try:
        assert gc.get_freeze_count() > 0
        assert client.get("/health/ready").status_code == 200
    finally:
        client.close()
    assert gc.get_freeze_count() == 0
