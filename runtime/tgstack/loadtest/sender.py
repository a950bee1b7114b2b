"""Where a load test's posts enter the stack: the ``Sender`` a run paces, and the in-process one.

The runner sees only the ``Sender`` protocol: it starts the sender once the pollers consume,
paces ``send``, shows ``stored`` in its progress line, calls ``finish`` after the last post and
``stop`` at the end (always), and counts the run over ``id_ranges``. Two senders exist:

* ``InProcessSender`` (the default, ``--through in-process``) hands each post to the gateway's
  own ``IngestPipeline`` through a ``BatchingWorker`` in the load test's process: the pipeline
  from the gateway's batch on, without Telegram. Each channel's ids continue after the highest
  already stored, so repeat runs on one database never collide.
* ``tgstack.loadtest.wire.WireSender`` (``--through telegram``) posts through the local Telegram
  server's control port to a real ``tgstack gateway`` process logged in over MTProto.

Invariant: every post ``send`` returns is one the stack was given, with the key it is stored
under and the time it was sent; ``id_ranges`` covers exactly the posts sent, no other post.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import psycopg

from tgstack.config import Settings
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.pipeline import BatchingWorker
from tgstack.gateway.wiring import build_pipeline, components
from tgstack.loadtest.plan import LoadPlan
from tgstack.loadtest.posts import PostFactory, SentPost

# The texts written before the run (the rest on the fly): enough for long runs at high rates
# without holding more than a few tens of MB.
PREPARED_TEXTS = 300_000


class Sender(Protocol):
    through: str
    """How posts enter the stack (``in-process``, ``telegram``): recorded with the result."""
    date_resolution: float
    """How much earlier than its sent time a post's stored ``telegram_date`` may be (s)."""

    def channels(self, plan: LoadPlan) -> list[int]:
        """The marked ids of the channels the run posts to (known before ``start``)."""
        ...

    def start(self, settings: Settings, plan: LoadPlan) -> None:
        """Get ready to send: after this, ``send`` reaches the stack ``settings`` describe."""
        ...

    def send(self, count: int) -> list[SentPost]:
        """Send the next ``count`` posts; what was sent, in order."""
        ...

    def stored(self) -> int | None:
        """Posts the gateway has committed so far, if the sender can tell (progress only)."""
        ...

    def finish(self, timeout: float) -> None:
        """After the last post: hand on whatever the sender still holds."""
        ...

    def stop(self) -> None:
        """Release everything ``start`` took; safe after a failed ``start`` and twice."""
        ...

    @property
    def sent(self) -> int: ...

    def id_ranges(self) -> dict[int, tuple[int, int]]:
        """Per channel, the first and last message id sent (channels with none left out)."""
        ...

    def report(self, conninfo: str) -> tuple[dict[str, Any], list[str]]:
        """After ``stop``: what the result records about the path, and what went wrong on it
        (``gateway_batches_failed``: batches the gateway had to retry, when known)."""
        ...


def first_ids(conninfo: str, channels: list[int]) -> dict[int, int]:
    """Start each channel's ids after the highest already stored (repeat runs never collide)."""
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        rows = conn.execute(
            "SELECT channel_id, max(message_id) FROM telegram_gateway.message_keys"
            " WHERE channel_id = ANY(%s) GROUP BY channel_id",
            (channels,),
        ).fetchall()
    highest = {int(channel): int(top) for channel, top in rows}
    return {channel: highest.get(channel, 0) + 1 for channel in channels}


class InProcessSender:
    """Posts into the gateway pipeline in this process, dated when they are handed over."""

    through = "in-process"
    date_resolution = 0.0

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._factory: PostFactory | None = None
        self._worker: BatchingWorker | None = None

    def channels(self, plan: LoadPlan) -> list[int]:
        return plan.channel_ids

    def start(self, settings: Settings, plan: LoadPlan) -> None:
        channels = settings.require_channels()
        self._factory = PostFactory(
            channels,
            first_ids(settings.require_database_url(), channels),
            signal_share=plan.signal_share,
            seed=plan.seed,
        )
        self._factory.prepare(min(plan.total_posts, PREPARED_TEXTS))
        parts = self._stack.enter_context(components(settings, source="loadtest"))
        self._worker = BatchingWorker(
            build_pipeline(parts),
            batch_size=settings.gateway_batch_size,
            max_delay=settings.gateway_batch_delay_ms / 1000,
        )
        self._worker.start()

    def send(self, count: int) -> list[SentPost]:
        assert self._factory is not None, "start() first"
        assert self._worker is not None, "start() first"
        sent: list[SentPost] = []
        for _ in range(count):
            record, post = self._factory.make()
            self._worker.submit(MessageEvent.new(record, observed_at=post.sent_at))
            sent.append(post)
        return sent

    def stored(self) -> int | None:
        return self._worker.totals.stored if self._worker is not None else None

    def finish(self, timeout: float) -> None:
        if self._worker is not None:
            self._worker.stop(timeout=timeout)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop(timeout=5.0)  # at once after finish(); a run that failed midway
        self._stack.close()

    @property
    def sent(self) -> int:
        return self._factory.sent if self._factory is not None else 0

    def id_ranges(self) -> dict[int, tuple[int, int]]:
        return self._factory.id_ranges() if self._factory is not None else {}

    def report(self, conninfo: str) -> tuple[dict[str, Any], list[str]]:
        failed = self._worker.failures if self._worker is not None else 0
        return {"through": self.through, "gateway_batches_failed": failed}, []
