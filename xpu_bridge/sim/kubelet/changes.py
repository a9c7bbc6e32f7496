"""Change notification: parts announce state changes, so waiters wake at once, without polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Changes:
    """notify() wakes every current waiter; each change arms a fresh event for the next."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Re-run check() after every change until it returns a value, for up to timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            # Taken before check(), so a change that check() cannot see yet still wakes us.
            changed = self._changed
            result = check()
            if result is not None:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"sim kubelet: timed out after {timeout}s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
