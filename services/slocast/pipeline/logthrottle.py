"""At most one line per repeated message per window, so an outage cannot flood the logs.

A dependency outage repeats the same failure every poll, tick or reconnect: librdkafka
alone logged 1,227 ``Connect to ... failed`` lines in 55 s with the broker down, and
the evaluator's tick a full traceback every 5 s. Here the first occurrence of a message
is logged as it is (traceback included); identical ones within ``window_s`` are counted,
not logged; the next one after the window is logged once with the count and without
the traceback: ``... (repeated 12 times in the last 60 s)``.

Messages are "identical" after numbers and addresses are blanked (``0x7f..``, offsets,
``after 3ms``, ``rdkafka#producer-2``), so a retry loop's changing details do not defeat it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

REPEAT_WINDOW_S = 60.0
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")
_MAX_KEYS = 1000


def _normalize(text: str) -> str:
    return _VARYING.sub("#", text)


class LogThrottle:
    """Decides which repetitions of a message are logged; thread-safe."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [time of the last logged line, repetitions suppressed since]
        self._seen: dict[tuple, list] = {}

    def admit(self, key: tuple) -> tuple[bool, int, float]:
        """(log it?, repetitions suppressed before it, seconds since the last logged one)."""
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None:
                if len(self._seen) >= _MAX_KEYS:
                    self._prune(now)
                self._seen[key] = [now, 0]
                return True, 0, 0.0
            elapsed = now - entry[0]
            if elapsed < self.window_s:
                entry[1] += 1
                return False, entry[1], elapsed
            suppressed = entry[1]
            entry[0], entry[1] = now, 0
            if not suppressed and elapsed >= 10 * self.window_s:
                return True, 0, 0.0  # a new episode long after the last: log it in full
            return True, suppressed, elapsed

    def _prune(self, now: float) -> None:
        for key in [k for k, (at, _) in self._seen.items() if now - at >= self.window_s]:
            del self._seen[key]
        if len(self._seen) >= _MAX_KEYS:
            self._seen.clear()

    def filter_record(self, record: logging.LogRecord) -> bool:
        """Admit or drop ``record``; a repeat after the window gets the count, no traceback."""
        message = record.getMessage()
        admitted, suppressed, elapsed = self.admit(
            (record.name, record.levelno, _normalize(message))
        )
        if not admitted:
            return False
        if suppressed or elapsed:  # a repeat: the first occurrence carried the traceback
            if suppressed:
                message += f" (repeated {suppressed} times in the last {elapsed:.0f} s)"
            record.msg, record.args = message, ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def log(
        self,
        logger: logging.Logger,
        level: int,
        msg: str,
        *args: object,
        exc_info: BaseException | bool | None = None,
    ) -> None:
        """``logger.log(level, msg, *args)`` through the throttle."""
        if not logger.isEnabledFor(level):
            return
        if exc_info is True:
            import sys

            exc_info = sys.exc_info()[1]
        record = logger.makeRecord(
            logger.name,
            level,
            "(throttled)",
            0,
            msg,
            args,
            (type(exc_info), exc_info, exc_info.__traceback__)
            if isinstance(exc_info, BaseException)
            else None,
        )
        if self.filter_record(record):
            logger.handle(record)


class ThrottleFilter(logging.Filter):
    """A :class:`LogThrottle` as a logging filter (for loggers every record should pass)."""

    def __init__(self, throttle: LogThrottle | None = None) -> None:
        super().__init__()
        self.throttle = throttle or LogThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        return self.throttle.filter_record(record)


# One throttle for the outage paths of a service process (consumer, readiness, ticks).
OUTAGES = LogThrottle()


def rdkafka_logger() -> logging.Logger:
    """The logger librdkafka's own lines go to (config ``logger``), throttled."""
    logger = logging.getLogger("slocast.librdkafka")
    if not any(isinstance(f, ThrottleFilter) for f in logger.filters):
        logger.addFilter(ThrottleFilter())
    return logger
