"""Retry policy and request-rate limiting for remote sources (Flickr, Earth Engine, HTTP).

Retries use tenacity with capped, jittered exponential backoff. Rate limits
use a token bucket per API key, shared by all threads of the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from graft.config import StrictModel
from graft.rejections import Rejected

T = TypeVar("T")


class RetryConfig(StrictModel):
    """Retries of a transient failure, with exponential back-off.

    Attributes:
        max_attempts: attempts in all, the first included.
        initial_s: first back-off, doubled after each attempt.
        max_backoff_s: longest back-off.
    """

    max_attempts: int = 6
    initial_s: float = 1.0
    max_backoff_s: float = 60.0


class TransientError(Rejected):
    """A failure worth retrying (429, 5xx, timeout, reset, malformed or truncated reply)."""


def call_with_retry(
    fn: Callable[[], T],
    cfg: RetryConfig,
    is_transient: Callable[[BaseException], bool] = lambda e: isinstance(e, TransientError),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds or ``cfg.max_attempts`` is reached; re-raise the last error."""
    retrying = Retrying(
        stop=stop_after_attempt(cfg.max_attempts),
        wait=wait_random_exponential(multiplier=cfg.initial_s, max=cfg.max_backoff_s),
        retry=retry_if_exception(is_transient),
        reraise=True,
        sleep=sleep,
    )
    return retrying(fn)


class RateLimiter(Protocol):
    """What a source calls before each request: returns when the request may go."""

    def acquire(self) -> None: ...


class TokenBucket:
    """Allow at most ``rate_per_hour`` acquisitions per hour, with bursts up to ``burst``."""

    def __init__(self, rate_per_hour: float, burst: int = 10, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate_per_hour <= 0:
            raise ValueError("rate_per_hour must be positive")
        self.rate = rate_per_hour / 3600.0
        self.capacity = float(burst)
        self.tokens = float(burst)
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
                self._last = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait = (1.0 - self.tokens) / self.rate
            self._sleep(wait)

    def reserve(self) -> float:
        """Take the next token now, even one that is not there yet; returns the seconds to wait before using it.

        Lets one bucket serve callers in other processes (a Ray actor holding it answers each
        caller at once, and the caller sleeps): tokens owed go negative, so reservations are
        spaced at the bucket's rate whatever the number of callers.
        """
        with self._lock:
            now = self._clock()
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now
            self.tokens -= 1.0
            return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate
