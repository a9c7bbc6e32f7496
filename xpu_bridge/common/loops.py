"""Background loops: run a step forever, surviving its errors, and notice a loop that died."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]


async def keep_running(
    what: str,
    step: Step,
    pause: Step,
    *,
    step_first: bool = False,
    after_failure: float = 0.0,
    meanwhile: str = "trying again",
) -> None:
    """`pause` then `step` (or the other way round), until cancelled. A failing step is logged
    as "<what> failed; <meanwhile>" and tried again after the next pause (plus
    `after_failure` seconds)."""
    if not step_first:
        await pause()
    while True:
        try:
            await step()
        except Exception:
            log.exception("%s failed; %s", what, meanwhile)
            if after_failure > 0:
                await asyncio.sleep(after_failure)
        await pause()


def every(seconds: Callable[[], float]) -> Step:
    """A pause of `seconds()` (read each time, so a changed interval takes effect)."""

    async def pause() -> None:
        await asyncio.sleep(seconds())

    return pause


class LoopSupervisor:
    """Owns the daemon's forever-loops; one that ends on its own makes the daemon not live."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self.broken: str | None = None

    def spawn(self, name: str, loop: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(loop, name=name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        self.broken = f"{task.get_name()} loop stopped: {error!r}"
        log.error("%s; /healthz now fails so that the pod is restarted", self.broken)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


def loop_time() -> float:
    """The event loop's monotonic clock, which every timer and deadline here runs on."""
    return asyncio.get_running_loop().time()
