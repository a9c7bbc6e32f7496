"""Pagination of List calls: page sizes as utils.ExtractPagination clamps them, and tokens."""

from __future__ import annotations

import bisect
import uuid
from dataclasses import dataclass, field

from xpu_bridge.sim.host_agent.errors import invalid, not_found

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 250
_MAX_TOKENS = 10_000


def page_size(requested: int) -> int:
    """utils.ExtractPagination: 0 means 50, above 250 is clamped, negative is refused."""
    if requested < 0:
        raise invalid("negative PageSize is not allowed")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


@dataclass
class Pager:
    """Opaque page tokens. Upstream maps a token to an offset; we map it to the last name
    served, so deletions between pages never make a walk skip an entry."""

    tokens: dict[str, str] = field(default_factory=dict)

    def check(self, size: int, token: str) -> tuple[int, str | None]:
        """The page size to serve and the name the page starts after (None: the start)."""
        size = page_size(size)
        if not token:
            return size, None
        if token not in self.tokens:
            raise not_found(f"unable to find pagination token {token}")
        return size, self.tokens[token]

    def slice(self, names: list[str], size: int, after: str | None) -> tuple[list[str], str]:
        """One page of the sorted `names` and the token of the next ("" after the last)."""
        start = 0 if after is None else bisect.bisect_right(names, after)
        chunk = names[start : start + size]
        if start + size >= len(names):
            return chunk, ""
        token = str(uuid.uuid4())
        self.tokens[token] = chunk[-1]
        while len(self.tokens) > _MAX_TOKENS:
            self.tokens.pop(next(iter(self.tokens)))
        return chunk, token
