"""When to try a request again and how long to wait: 429 and 503 with ``Retry-After``, and exponential backoff.

    policy = RetryPolicy(attempts=5, backoff=0.5)
    policy.delay(1, "3")      # 3.0: the gateway said so
    policy.delay(2, None)     # about 1.0: backoff doubles per attempt (plus up to 10 % jitter)
"""

from __future__ import annotations

import dataclasses
import random
import time
from email.utils import parsedate_to_datetime


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    #: Tries in all, the first included (1: never retry).
    attempts: int = 5
    #: The first wait without a ``Retry-After``, in seconds; it doubles with each attempt.
    backoff: float = 0.5
    #: The longest wait, whatever ``Retry-After`` says.
    max_backoff: float = 60.0
    #: Up to this share of a computed wait is added at random, so many clients spread out.
    jitter: float = 0.1
    #: Statuses that mean "not now": the request was refused before anything was done.
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        told = parse_retry_after(retry_after)
        if told is not None:
            return min(told, self.max_backoff)
        wait = min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)
        return wait + random.uniform(0, wait * self.jitter) if self.jitter else wait


NO_RETRIES = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None
