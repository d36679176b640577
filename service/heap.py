"""The Python heap of a serving process: kept out of the cyclic collector's full passes.

A loaded model server holds hundreds of thousands of long-lived objects (the web
framework, pydantic's validators, NumPy, ONNX Runtime's bindings, every model's
manifest). CPython's full (generation 2) collection walks all of them, and it runs
whenever enough objects have survived since the last one: under load, about every
second or two, for ~45 ms on the event loop with the digits zoo on a 2-core VM. Every
request in flight waits for it, which made such pauses the p99 at c = 16 (issue 34:
`gc.callbacks` timing in `bench.server_cpu --model pixelcnn-digits -c 16`, p99 72 ms
with them, 42 ms without).

`gc.freeze()` moves everything alive into a permanent generation that collections skip.
Objects in it are still freed by reference counting; only garbage *cycles* among them
wait until the next `settle()`, which unfreezes, collects and freezes again after each
change to what is loaded (a model loaded or retired), so a retired model's cycles go then.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("genserve.heap")


def settle() -> None:
    """Collect everything collectable now and freeze what is left: call once the set of
    loaded models has changed (start-up, a live load, a retired version)."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    took = 1e3 * (time.perf_counter() - started)
    log.debug("heap settled: %d objects frozen in %.0f ms", gc.get_freeze_count(), took)


def release() -> None:
    """Give the frozen objects back to the collector (at shutdown): a process that builds
    and closes several apps, as the tests do, then collects each one's cycles."""
    gc.unfreeze()
