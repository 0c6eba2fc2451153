"""What happens when an after-commit handler fails: retries, then the dead-letter store.

A failed delivery is first retried ``immediate`` times straight away (transient conflicts,
dropped connections). Then it is retried ``delayed`` more times, each after a delay drawn with
*full jitter*: uniformly between 0 and ``min(max_delay, base_delay * 2 ** n)`` for the n-th
delayed retry, so many relays failing together do not retry in lockstep. Past that, the message
is dead-lettered and the subscriber's :class:`OnFailure` decides what happens to the rest of
its stream.

While a message waits for a delayed retry, its partition waits too (per-stream order is never
broken); other partitions and other subscribers keep flowing.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from tidings.errors import ConfigurationError


class OnFailure(enum.Enum):
    """What a subscriber does with a stream once one of its messages is dead-lettered."""

    #: Dead-letter the message and carry on with the stream's later events.
    SKIP = "skip"
    #: Dead-letter the message and hold the stream's later events behind it (as ``held`` dead
    #: letters) until it is replayed or discarded, so the stream's order is never broken.
    PARK = "park"


@dataclass(frozen=True)
class RetryPolicy:
    """Immediate retries, then delayed retries with exponential backoff and full jitter."""

    immediate: int = 2
    delayed: int = 5
    base_delay: float = 1.0
    max_delay: float = 300.0
    #: Seed for the jitter, for reproducible schedules in tests; None draws from the OS.
    seed: int | None = None
    _random: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("immediate", "delayed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"RetryPolicy.{name} must be an integer >= 0: {value!r}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ConfigurationError(
                f"RetryPolicy delays must be >= 0: base_delay={self.base_delay!r}, "
                f"max_delay={self.max_delay!r}"
            )
        object.__setattr__(self, "_random", random.Random(self.seed))

    @property
    def max_attempts(self) -> int:
        """Deliveries in total before the message is dead-lettered."""
        return 1 + self.immediate + self.delayed

    def delay_after(self, attempt: int) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        0 for an immediate retry, a jittered delay for a delayed one, None when the policy is
        exhausted and the message must be dead-lettered.
        """
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        if attempt >= self.max_attempts:
            return None
        if attempt <= self.immediate:
            return 0.0
        exponent = attempt - self.immediate - 1
        ceiling = min(self.max_delay, self.base_delay * (2.0**exponent))
        return self._random.uniform(0.0, ceiling)

    def schedule(self) -> list[float]:
        """The whole delay schedule (draws from the jitter source: use a fresh seeded policy)."""
        delays = []
        attempt = 1
        while (delay := self.delay_after(attempt)) is not None:
            delays.append(delay)
            attempt += 1
        return delays


NO_RETRY = RetryPolicy(immediate=0, delayed=0)


@dataclass(frozen=True)
class SubscriberPolicy:
    """Failure handling for one subscriber."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    on_failure: OnFailure = OnFailure.SKIP
