"""Threads around the model for the scene driver: a lock that lets two threads read one source, and a
write-behind stage that composites, casts and writes finished rows while the next rows are inferred.

GDAL (reading, decompressing, compressing, writing), NumPy's large-array loops and ONNX Runtime release the
GIL, so reading ahead (:func:`cloudrt.scene.tiling.blend_rows` with ``prefetch``), inference and the
write-behind stage overlap. Every stage does the same arithmetic in the same order as the single-threaded
pass, so the output is bit-identical; queues are bounded, so memory stays flat.
"""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

_DONE = object()


def inherited_env() -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Called in the caller's thread: a factory that enters, in a worker thread, the rasterio environment
    active here (rasterio keeps it per thread; GDAL options such as the block-cache cap are global anyway).
    A no-op where rasterio is not in use."""
    env = sys.modules.get("rasterio.env")
    if env is None or not env.hasenv():
        return contextlib.nullcontext
    import rasterio

    options = dict(env.getenv())
    return lambda: rasterio.Env(**options)


class LockedSource:
    """``src`` with its reads (``optical``, ``sar``, ``mask``) serialized: a rasterio dataset must not be
    read from two threads at once, while NumPy sources just pay an uncontended lock."""

    def __init__(self, src: Any) -> None:
        self._src, self._lock = src, threading.Lock()

    def __getattr__(self, name: str) -> Any:  # height, width, nodata, ods, ...
        return getattr(self._src, name)

    def optical(self, *args: Any) -> Any:
        with self._lock:
            return self._src.optical(*args)

    def sar(self, *args: Any) -> Any:
        with self._lock:
            return self._src.sar(*args)

    def mask(self, *args: Any) -> Any:
        with self._lock:
            return self._src.mask(*args)


class WriteBehind:
    """Call ``consume(*item)`` for every :meth:`put` item in one worker thread, in order.

    At most ``depth`` items are handed over and not yet consumed: with the default 1, :meth:`put` waits until
    the worker finished the previous item, so besides the worker's item only the caller's next one exists
    (bounded, small memory: the overlap needs no more). An exception in ``consume`` stops the worker and is
    raised in the caller's thread by the next :meth:`put` or by leaving the ``with`` block; an exception in
    the caller stops the worker after its current item. Use as a context manager.
    """

    def __init__(self, consume: Callable[..., None], depth: int = 1) -> None:
        self._consume = consume
        self._q: queue.Queue[Any] = queue.Queue()
        self._slots = threading.BoundedSemaphore(max(1, depth))
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="cloudrt-write", daemon=True)
        self._env = inherited_env()

    def __enter__(self) -> WriteBehind:
        self._thread.start()
        return self

    def _work(self) -> None:
        with self._env():
            self._loop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._q.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is _DONE:
                return
            try:
                self._consume(*item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e
                return
            del item
            self._slots.release()

    def put(self, *item: Any) -> None:
        """Queue ``item`` (blocks while ``depth`` items wait); raises the worker's error if it failed."""
        self._offer(item)

    def _offer(self, item: Any) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                raise RuntimeError("the write-behind thread stopped unexpectedly")
            if item is _DONE or self._slots.acquire(timeout=0.05):
                self._q.put(item)
                return

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self._offer(_DONE)
            except BaseException:
                self._stop.set()
                self._thread.join()
                raise
            self._thread.join()
            if self._error is not None:
                raise self._error
        else:  # the caller failed: stop after the current item, report the caller's error
            self._stop.set()
            self._thread.join()
