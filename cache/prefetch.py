"""A bounded background prefetcher with clean shutdown."""
from __future__ import annotations

import queue
import threading
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _put(q: queue.Queue, stop: threading.Event, item: object) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(source: Iterator, q: queue.Queue, stop: threading.Event) -> None:
    try:
        for item in source:
            if not _put(q, stop, item):
                return
        _put(q, stop, _DONE)
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put(q, stop, _Failure(e))
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


class Prefetcher(Generic[T]):
    """Runs `source` in a daemon thread, keeping at most `depth` items ready.

    Closing (explicitly, via `with`, or when garbage collected) stops the thread even if the
    consumer stopped early; an exception in the thread is re-raised in the consumer.
    """

    def __init__(self, source: Iterator[T], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        # The thread must not reference `self`, so that an abandoned Prefetcher is collected (and closed).
        self._thread = threading.Thread(target=_produce, args=(source, self._queue, self._stop),
                                        daemon=True, name="cache-prefetch")
        self._thread.start()

    def __iter__(self) -> "Prefetcher[T]":
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread and drop prefetched items."""
        self._finished = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def alive(self) -> bool:
        """Whether the background thread is still running."""
        return self._thread.is_alive()

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            self.close()
