"""Config reloads: on SIGHUP or a changed file, read and check the config as start-up does, then
apply what a running daemon can (reconfigure.py) and name what only a restart applies.

A config that does not load, overlaps on this node or names a logical bridge the agent lacks
changes nothing: one ERROR line per problem, as `run` prints them, and the running config
stays. Each reload counts in xpu_bridge_config_reloads_total by result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from xpu_bridge.checks import config_warnings
from xpu_bridge.common.file_watch import FileWatch
from xpu_bridge.common.loops import keep_running
from xpu_bridge.config import Config, ConfigError, load_config
from xpu_bridge.config.changes import config_changes
from xpu_bridge.ops.metrics import (
    RELOAD_APPLIED,
    RELOAD_FAILED,
    RELOAD_INVALID,
    RELOAD_RESTART_REQUIRED,
    RELOAD_UNCHANGED,
    Metrics,
)
from xpu_bridge.reconfigure import ConfigApplier

log = logging.getLogger(__name__)


class ConfigReloader:
    """Owns the running config; reloads one at a time, from its loop or a direct call."""

    def __init__(
        self,
        path: Path | None,
        config: Config,
        applier: ConfigApplier,
        metrics: Metrics,
        poll_seconds: float,
    ) -> None:
        """Without a `path` (a daemon built from a Config in memory) nothing is reloaded."""
        self.path = path
        self.config = config
        self.poll_seconds = poll_seconds
        self._applier = applier
        self.metrics = metrics
        self._watch = FileWatch(path) if path is not None else None
        self._requested = asyncio.Event()
        self._lock = asyncio.Lock()
        self._first_look = True
        if self._watch is not None:
            metrics.config_loaded(self._watch.digest)

    def request(self) -> None:
        """SIGHUP: reload at once (the loop's next step), whether the file changed or not."""
        if self._watch is None:
            log.warning("config reload asked for, but this daemon has no config file to read")
            return
        self._requested.set()

    async def run(self) -> None:
        """Polls the file every poll_seconds, and answers request() at once, until cancelled."""
        await keep_running(
            "config reload", self._step, self._wait, step_first=True, after_failure=1.0
        )

    async def _wait(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._requested.wait(), self.poll_seconds)

    async def _step(self) -> None:
        if self._watch is None:
            return
        if self._first_look:  # the file may have changed since `run` read it
            self._first_look = False
            if await self._differs():
                await self.reload("file changed while starting")
        elif self._requested.is_set():
            self._requested.clear()
            await self.reload("SIGHUP")
        elif self._watch.changed():
            await self.reload("file changed")

    async def _differs(self) -> bool:
        assert self.path is not None
        try:
            return await asyncio.to_thread(load_config, self.path) != self.config
        except ConfigError:
            return True

    async def reload(self, trigger: str) -> str:
        """Read, check and apply; returns the result as the metric counts it."""
        async with self._lock:
            try:
                result = await self._reload(trigger)
            except Exception:
                log.exception("config %s: reload (%s) failed", self.path, trigger)
                result = RELOAD_FAILED
        self.metrics.config_reloaded(result)
        return result

    async def _reload(self, trigger: str) -> str:
        if self.path is None or self._watch is None:
            return RELOAD_UNCHANGED
        where = f"config {self.path}"
        digest = self._watch.refresh()
        try:
            new = await asyncio.to_thread(load_config, self.path)
            if new == self.config:
                log.info("%s: unchanged (%s)", where, trigger)
                return RELOAD_UNCHANGED
            changes = config_changes(self.config, new)
            for field in changes.restart_only:
                log.warning("%s: %s changed: restart the daemon to apply", where, field)
            if not changes.applies:
                log.warning("%s: nothing else changed (%s)", where, trigger)
                return RELOAD_RESTART_REQUIRED
            found = await self._applier.check(changes.config, self.config)
        except ConfigError as error:
            for problem in error.problems:
                log.error("%s: %s", where, problem)
            log.warning(
                "%s: not reloaded (%s): the running config stays until the file is fixed",
                where,
                trigger,
            )
            return RELOAD_INVALID
        for warning in config_warnings(changes.config):
            log.warning("%s: %s", where, warning)
        await self._applier.apply(self.config, changes, found)
        self.config = changes.config
        self.metrics.config_loaded(digest)
        log.info("%s: reloaded (%s): %s", where, trigger, changes.summary())
        return RELOAD_APPLIED
