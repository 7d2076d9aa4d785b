"""The requests waiting for the model: a bounded FIFO from which an abandoned request is removed at once.

A plain ``queue.Queue`` can neither refuse past a bound per kind of job nor drop a job from its
middle, so a storm of clients that went away would sit in it (and count in ``/health``'s
``queued``) until the worker reached each one.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """The queue holds its bound of requests: the caller answers 429."""


class JobQueue(Generic[T]):
    """FIFO of jobs for one worker. ``put`` refuses a request past ``bound`` waiting ones (``force``
    admits one anyway: a shutdown sentinel, an exclusive task); ``discard`` removes a job whose
    client went away; ``put_front`` hands back a job taken too early, keeping its place."""

    def __init__(self, bound: int):
        self.bound = bound
        self._items: deque = deque()
        self._ready = threading.Condition()

    def put(self, item: T | None, force: bool = False) -> None:
        with self._ready:
            if not force and len(self._items) >= self.bound:
                raise QueueFull(f"{len(self._items)} requests are waiting (the bound is {self.bound})")
            self._items.append(item)
            self._ready.notify()

    def put_front(self, item: T | None) -> None:
        with self._ready:
            self._items.appendleft(item)
            self._ready.notify()

    def get(self) -> T | None:
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def get_nowait(self) -> T | None:
        with self._ready:
            if not self._items:
                raise queue.Empty
            return self._items.popleft()

    def discard_future(self, future: Future) -> bool:
        """Remove the job that owns ``future`` (matched by identity); False when it is not queued."""
        with self._ready:
            for i, item in enumerate(self._items):
                if item is not None and getattr(item, "future", None) is future:
                    del self._items[i]
                    return True
        return False

    def qsize(self) -> int:
        with self._ready:
            return len(self._items)
