"""The retry policy for transient provider errors: the one place retries are decided.

Exponential backoff with full jitter, capped; a provider's ``Retry-After`` is a floor.
Permanent errors never reach here. The SDKs' own retries are configured off or to one
attempt where an adapter uses an SDK, so that the two policies don't multiply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempts - 1))
        backoff = random.uniform(0, ceiling)
        return max(backoff, min(retry_after, self.max_delay)) if retry_after else backoff
