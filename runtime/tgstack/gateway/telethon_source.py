"""The Telethon source: live NewMessage/MessageEdited/MessageDeleted events, the backfill of
holes below each channel's watermark, and the reconciliation of a recent window.

The client is non-interactive: the session is made once by ``tgstack login``. At start we
connect, check ``is_user_authorized()`` and fail fast with one clear line when the session is
missing or revoked. Each channel is resolved once and cached. FloodWait follows the
gateway's one policy (tgstack.gateway.flood): waited out in place, logged and counted, a
bounded number of times; a channel whose call gives up is tried again next round. History
pages are paced by the policy's account-wide gate, not here.

Backfill (``backfill``): per channel, the newest id Telegram shows (``top``) bounds the round;
the holes below it and above the watermark are found in SQL and fetched as ``watermark.py``
plans (small holes by id with ``channels.getMessages``, large ones by ``messages.getHistory``
pages, oldest first). Every post goes through the ingest pipeline like a live one; the ids
Telegram did not return are recorded as known absent; the watermark is moved in SQL after each
page, over what is committed only. So a gateway killed at any point has a watermark at or
below the truth and resumes at its first hole, and a live post stored above a hole never hides
it. A round ends by waiting (a few seconds at most) for the pipeline to commit what it fetched,
so the watermark reaches the newest id. Measured on the test PostgreSQL: moving the watermark
costs 15 ms with 20,000 committed rows above a hole (1 ms when it is at the top) and finding the
holes 10 ms, against a page a second: cheap enough to do after every page, which is what bounds
the work a kill -9 throws away to one page plus the pipeline's backlog.

Reconciliation (``reconcile``): per channel, the stored posts of a window of the newest ids are
read, then Telegram's, and ``reconcile.py`` says what differs; edits, deletions and missing
posts go through the pipeline's own edit, delete and new paths, and are counted in
``tgstack_gateway_reconciled_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from telethon import TelegramClient, errors, events, utils
from telethon.tl import types

from tgstack import metrics
from tgstack.gateway.events import MessageEvent
from tgstack.gateway.flood import FloodPolicy, FloodWaitExceeded, FloodWaitObserver
from tgstack.gateway.reconcile import plan_repairs, window_start
from tgstack.gateway.watermark import (
    IDS_PER_CALL,
    ByIds,
    Hole,
    initial_floor,
    plan_fetches,
)
from tgstack.models import MESSAGE_ID_MAX, MessageRecord, StoredPost, Watermark

log = logging.getLogger("tgstack.gateway.telethon")

SETTLE_POLL_SECONDS = 0.2
TOP_REUSE_SECONDS = 120.0  # a backfill round's newest id, reused by the reconciliation after it

EventSink = Callable[[MessageEvent], None]


class GatewayFatal(RuntimeError):
    """The gateway cannot run and retrying will not help (the operator must act)."""


FATAL_AUTH_ERRORS: dict[type[BaseException], str] = {
    errors.AuthKeyUnregisteredError: "the Telegram session is no longer registered "
    "(logged out elsewhere); run `tgstack login` again",
    errors.SessionRevokedError: "the Telegram session was revoked (terminated from another "
    "device); run `tgstack login` again",
    errors.AuthKeyDuplicatedError: "the Telegram session was used from two places at once and "
    "Telegram invalidated it; run `tgstack login` again and never copy the session file",
}


def explain_fatal(exc: BaseException) -> str | None:
    for error_type, explanation in FATAL_AUTH_ERRORS.items():
        if isinstance(exc, error_type):
            return explanation
    return None


T = TypeVar("T")


class BackfillStore(Protocol):
    """What the backfill and the reconciliation need of PostgreSQL (``tgstack.db.Database``)."""

    def init_watermark(self, channel_id: int, floor: int) -> Watermark: ...
    def advance_watermark(self, channel_id: int, top: int, absent: Sequence[int] = ()) -> int: ...
    def find_holes(self, channel_id: int, top: int, limit: int = 1000) -> list[tuple[int, int]]: ...
    def stored_posts(self, channel_id: int, after: int, last: int) -> dict[int, StoredPost]: ...
    def mark_backfilled(self, channel_id: int) -> None: ...


@dataclass(frozen=True, slots=True)
class BackfillPolicy:
    """How far back and how wide (settings ``gateway_backfill_depth`` and
    ``gateway_reconcile_window``; see config.py). How fast is the flood policy's history gate."""

    depth: int = 0  # ids below the newest a channel's first backfill reaches (0: all)
    reconcile_window: int = 0  # newest ids read again by a reconciliation (0: none)
    hole_limit: int = 1000  # holes filled per channel and round (the rest: next round)
    settle_seconds: float = 5.0  # how long a round waits for a watermark that stopped moving


def _media_type(media: object) -> tuple[str | None, dict[str, Any] | None]:
    if media is None:
        return None, None
    if isinstance(media, types.MessageMediaPhoto):
        photo = media.photo
        return "photo", {"photo_id": getattr(photo, "id", None)}
    if isinstance(media, types.MessageMediaDocument):
        document = media.document
        mime = getattr(document, "mime_type", None) or ""
        kind = mime.split("/", 1)[0] if mime.split("/", 1)[0] in ("video", "audio") else "document"
        return kind, {"document_id": getattr(document, "id", None), "mime_type": mime or None}
    if isinstance(media, types.MessageMediaWebPage):
        return "webpage", {"url": getattr(media.webpage, "url", None)}
    name = type(media).__name__.removeprefix("MessageMedia").lower()
    return name or "unknown", None


def _thread_and_reply(message: types.Message, channel_id: int) -> tuple[int | None, int | None]:
    """The forum topic a post is in (``thread_id``) and the post of this channel it replies to
    (``reply_to_msg_id``), from its MessageReplyHeader.

    In a forum topic every post carries a header: one only *in* the topic has
    ``reply_to_msg_id`` = the topic's first post and no ``reply_to_top_id``; a reply within
    the topic has ``reply_to_top_id`` = the topic and ``reply_to_msg_id`` = the post replied
    to. A reply to a post of another chat (``reply_to_peer_id`` names it) is no reply to a post
    of this channel; neither is a reply to a story (MessageReplyStoryHeader) or an id outside
    Telegram's range.
    """
    reply_to = getattr(message, "reply_to", None)
    if not isinstance(reply_to, types.MessageReplyHeader):
        return None, None
    replied = reply_to.reply_to_msg_id
    thread_id = None
    if reply_to.forum_topic:
        thread_id = reply_to.reply_to_top_id or replied
        if reply_to.reply_to_top_id is None:
            replied = None  # only in the topic
    if reply_to.reply_to_peer_id is not None and (
        utils.get_peer_id(reply_to.reply_to_peer_id) != channel_id
    ):
        replied = None
    if not isinstance(replied, int) or not 1 <= replied <= MESSAGE_ID_MAX:
        replied = None
    return thread_id, replied


def record_from_message(message: types.Message, *, source: str = "user_client") -> MessageRecord:
    """Map a Telethon message to our record. A media post's text is stored as its caption."""
    channel_id = utils.get_peer_id(message.peer_id)
    media_type, media_refs = _media_type(message.media)
    raw = message.message or None
    thread_id, reply_to_msg_id = _thread_and_reply(message, channel_id)
    return MessageRecord.create(
        channel_id,
        message.id,
        message.date,
        text=None if media_type else raw,
        caption=raw if media_type else None,
        media_type=media_type,
        media_refs=media_refs,
        thread_id=thread_id,
        reply_to_msg_id=reply_to_msg_id,
        grouped_id=message.grouped_id,
        edit_date=message.edit_date,
        source=source,
        message_type="media" if media_type else "text",
        metadata={"views": message.views} if message.views is not None else {},
    )


class TelethonSource:
    """Feeds live and backfilled channel events from a connected client into ``sink``."""

    def __init__(
        self,
        client: TelegramClient,
        channels: Iterable[int],
        sink: EventSink,
        *,
        store: BackfillStore,
        policy: BackfillPolicy | None = None,
        on_flood_wait: FloodWaitObserver | None = None,
        on_backfill_progress: Callable[[int, int], None] | None = None,
        flood: FloodPolicy | None = None,
    ) -> None:
        self._client = client
        self._channels = list(channels)
        self._sink = sink
        self._store = store
        self._policy = policy or BackfillPolicy()
        self._flood = flood or FloodPolicy(observer=on_flood_wait)
        self._on_backfill_progress = on_backfill_progress
        self._entities: dict[int, Any] = {}
        self._dialogs_loaded = False
        # Per channel, the lowest watermark a backfill round started from since the last
        # reconciliation: the next one reaches below it (posts edited while the gap lasted).
        self._gap_from: dict[int, int] = {}
        # The newest id each channel's last backfill round saw, and when: the reconciliation
        # that follows a round reuses it instead of asking Telegram again (one history request
        # per channel fewer; with 500 channels, 500 fewer requests through the rate gate).
        self._tops: dict[int, tuple[int, float]] = {}

    async def start(self) -> None:
        """Connect, verify the session, resolve channels and register the event handlers."""
        await self._client.connect()
        try:
            authorized = await self._client.is_user_authorized()
        except tuple(FATAL_AUTH_ERRORS) as exc:
            raise GatewayFatal(explain_fatal(exc) or str(exc)) from exc
        if not authorized:
            raise GatewayFatal(
                "the Telegram session is missing or not logged in; run `tgstack login` once"
            )
        for channel_id in self._channels:
            try:
                self._entities[channel_id] = await self._resolve(channel_id)
            except FloodWaitExceeded as exc:  # resolved by its backfill next round
                extra = {"channel_id": channel_id, "error": str(exc)}
                log.warning("channel_not_resolved", extra=extra)
        chats = list(self._channels)
        self._client.add_event_handler(self.on_new_message, events.NewMessage(chats=chats))
        self._client.add_event_handler(self.on_message_edited, events.MessageEdited(chats=chats))
        self._client.add_event_handler(self.on_message_deleted, events.MessageDeleted())
        log.info("telegram_source_started", extra={"channels": len(chats)})

    async def _resolve(self, channel_id: int) -> Any:
        """The channel's input entity. A user account needs the access hash Telegram gave it:
        the session's cache holds it after `tgstack login`; when it does not (an older session,
        a channel joined since), the dialogs are read once and the lookup tried again."""
        peer = types.PeerChannel(utils.resolve_id(channel_id)[0])
        try:
            return await self._with_flood_wait(
                lambda: self._client.get_input_entity(peer), f"resolve {channel_id}"
            )
        except ValueError:
            pass
        if not self._dialogs_loaded:
            await self._with_flood_wait(self._client.get_dialogs, "dialogs")
            self._dialogs_loaded = True
        try:
            return await self._client.get_input_entity(peer)
        except ValueError:
            raise GatewayFatal(
                f"channel {channel_id} is not among the Telegram account's dialogs: join it with "
                "this account (or remove it from TGSTACK_CHANNELS)"
            ) from None

    async def on_new_message(self, event: events.NewMessage.Event) -> None:
        self._sink(MessageEvent.new(record_from_message(event.message)))

    async def on_message_edited(self, event: events.MessageEdited.Event) -> None:
        self._sink(MessageEvent.edit(record_from_message(event.message)))

    async def on_message_deleted(self, event: events.MessageDeleted.Event) -> None:
        channel_id = event.chat_id
        if channel_id is None or channel_id not in self._channels:
            return  # deletions outside our channels (or private chats without a peer)
        self._sink(MessageEvent.delete(channel_id, tuple(event.deleted_ids)))

    async def catch_up(self) -> int:
        """After missing updates: ask Telethon for the difference (edits and deletions made
        meanwhile arrive as events), then backfill every channel. Returns the posts fetched."""
        await self._client.catch_up()
        return await self.backfill()

    async def backfill(self) -> int:
        """Fill every channel's holes, then wait for the watermarks to cover what was fetched.
        Returns the posts fetched."""
        total = 0
        targets: dict[int, tuple[int, int]] = {}
        for channel_id in self._channels:
            try:
                fetched, target = await self._fill_channel(channel_id)
            except FloodWaitExceeded as exc:  # the other channels go on; this one next round
                extra = {"channel_id": channel_id, "error": str(exc)}
                log.warning("backfill_given_up", extra=extra)
                continue
            total += fetched
            if target is not None:
                targets[channel_id] = target
        await self._settle(targets)
        return total

    async def backfill_channel(self, channel_id: int) -> int:
        """One channel's backfill round; returns the posts fetched."""
        fetched, target = await self._fill_channel(channel_id)
        await self._settle({channel_id: target} if target is not None else {})
        return fetched

    async def _fill_channel(self, channel_id: int) -> tuple[int, tuple[int, int] | None]:
        """Fetch the channel's holes; returns the posts fetched and (the id its watermark should
        reach, the newest id), or None for a channel without any message."""
        during = f"backfill {channel_id}"
        entity = await self._entity(channel_id)
        top = await self._newest_id(entity, during)
        self._tops[channel_id] = (top, time.monotonic())
        if top == 0:
            return 0, None
        floor = initial_floor(top, self._policy.depth)
        mark = await _off_loop(self._store.init_watermark, channel_id, floor)
        watermark = await _off_loop(self._store.advance_watermark, channel_id, top, ())
        if not mark.created:  # a new channel's whole history is fetched now: nothing to redo
            self._gap_from[channel_id] = min(self._gap_from.get(channel_id, watermark), watermark)
        found = await _off_loop(self._store.find_holes, channel_id, top, self._policy.hole_limit)
        holes = [Hole(first, last) for first, last in found]
        # With more holes than one round takes, the round's target is the last one it fills.
        target = holes[-1].last if len(holes) >= self._policy.hole_limit else top
        fetched = 0
        last_report = time.monotonic()
        for fetch in plan_fetches(holes):
            if isinstance(fetch, ByIds):
                messages = await self._by_ids(entity, fetch.ids, during)
                fetched += await self._take(channel_id, top, messages, fetch.ids)
            else:
                async for messages, after, scanned in self._history(
                    entity, fetch.after, fetch.last, during
                ):
                    asked = range(after + 1, scanned + 1)
                    fetched += await self._take(channel_id, top, messages, asked)
                    if time.monotonic() - last_report >= 5:
                        last_report = time.monotonic()
                        self._report_progress(channel_id, fetched)
        self._report_progress(channel_id, fetched)
        log.info(
            "backfill_done",
            extra={
                "channel_id": channel_id,
                "fetched": fetched,
                "holes": len(holes),
                "watermark": watermark,
                "top": top,
            },
        )
        return fetched, (target, top)

    async def _take(
        self, channel_id: int, top: int, messages: Sequence[Any], asked: Iterable[int]
    ) -> int:
        """Send the posts among ``messages`` to the pipeline, record the ids of ``asked`` that
        are no post as absent, and move the watermark over what is committed. Returns the
        posts sent."""
        posts = [m for m in messages if isinstance(m, types.Message)]
        for message in posts:
            self._sink(MessageEvent.new(record_from_message(message, source="backfill")))
        returned = {m.id for m in posts}
        absent = [i for i in asked if i not in returned]
        await _off_loop(self._store.advance_watermark, channel_id, top, absent)
        return len(posts)

    async def _settle(self, targets: dict[int, tuple[int, int]]) -> None:
        """Wait until each channel's watermark reaches its target (what the round fetched is
        committed), or until no watermark has moved for ``settle_seconds``; the next round
        takes up what is left."""
        pending = dict(targets)
        seen: dict[int, int] = {}
        moved_at = time.monotonic()
        while True:
            for channel_id, (target, top) in list(pending.items()):
                watermark = await _off_loop(self._store.advance_watermark, channel_id, top, ())
                metrics.GATEWAY_WATERMARK_LAG.labels(str(channel_id)).set(top - watermark)
                if seen.get(channel_id) != watermark:
                    seen[channel_id] = watermark
                    moved_at = time.monotonic()
                if watermark >= target:
                    del pending[channel_id]
                    await _off_loop(self._store.mark_backfilled, channel_id)
            if not pending:
                return
            if time.monotonic() - moved_at >= self._policy.settle_seconds:
                for channel_id, (target, _) in pending.items():
                    log.warning(
                        "watermark_behind",
                        extra={
                            "channel_id": channel_id,
                            "watermark": seen.get(channel_id),
                            "target": target,
                        },
                    )
                return
            await asyncio.sleep(SETTLE_POLL_SECONDS)

    async def reconcile(self) -> dict[str, int]:
        """Reconcile every channel; returns the repairs by kind (edit, delete, missing)."""
        totals: Counter[str] = Counter()
        for channel_id in self._channels:
            try:
                totals.update(await self.reconcile_channel(channel_id))
            except FloodWaitExceeded as exc:  # the other channels go on; this one next time
                extra = {"channel_id": channel_id, "error": str(exc)}
                log.warning("reconciliation_given_up", extra=extra)
        return {kind: totals[kind] for kind in ("edit", "delete", "missing")}

    async def reconcile_channel(self, channel_id: int) -> dict[str, int]:
        """Read the channel's window again and send what differs through the pipeline."""
        window = self._policy.reconcile_window
        if window <= 0:
            return {}
        during = f"reconcile {channel_id}"
        entity = await self._entity(channel_id)
        seen_top, seen_at = self._tops.get(channel_id, (0, 0.0))
        if time.monotonic() - seen_at <= TOP_REUSE_SECONDS:
            top = seen_top  # what is newer is live, and in the next round's window
        else:
            top = await self._newest_id(entity, during)
        if top == 0:
            return {}
        floor = initial_floor(top, self._policy.depth)
        mark = await _off_loop(self._store.init_watermark, channel_id, floor)
        gap_from = self._gap_from.get(channel_id)
        after = window_start(
            top, window, gap_from=gap_from, depth=self._policy.depth, floor=mark.floor
        )
        # Ours first, then Telegram's: see reconcile.py for why the order matters.
        stored = await _off_loop(self._store.stored_posts, channel_id, after, top)
        seen: dict[int, MessageRecord] = {}
        async for messages, _, _ in self._history(entity, after, top, during):
            for message in messages:
                if isinstance(message, types.Message):
                    seen[message.id] = record_from_message(message, source="reconcile")
        repairs = plan_repairs(stored, seen, after=after, last=top)
        for record in repairs.missing:
            self._sink(MessageEvent.new(record))
        for record in repairs.edits:
            self._sink(MessageEvent.edit(record))
        for start in range(0, len(repairs.deletes), IDS_PER_CALL):
            chunk = tuple(repairs.deletes[start : start + IDS_PER_CALL])
            self._sink(MessageEvent.delete(channel_id, chunk))
        counts = repairs.counts()
        for kind, count in counts.items():
            if count:
                metrics.GATEWAY_RECONCILED.labels(kind).inc(count)
        if gap_from is not None and self._gap_from.get(channel_id) == gap_from:
            del self._gap_from[channel_id]
        log.info(
            "reconciled",
            extra={"channel_id": channel_id, "after": after, "top": top, **counts},
        )
        return counts

    # Telegram calls ------------------------------------------------------------------------

    async def _entity(self, channel_id: int) -> Any:
        return self._entities.get(channel_id) or await self._resolve(channel_id)

    async def _newest_id(self, entity: Any, during: str) -> int:
        """The newest message id of the channel (a service message's too); 0 when it has none."""
        newest = await self._with_flood_wait(
            lambda: self._client.get_messages(entity, limit=1), during
        )
        return max((m.id for m in newest if m is not None), default=0)

    async def _by_ids(self, entity: Any, ids: Sequence[int], during: str) -> list[Any]:
        """The messages with these ids that Telegram returns (channels.getMessages)."""
        found = await self._with_flood_wait(
            lambda: self._client.get_messages(entity, ids=list(ids)), during
        )
        return [m for m in found if m is not None]

    async def _history(
        self, entity: Any, after: int, last: int, during: str
    ) -> AsyncIterator[tuple[list[Any], int, int]]:
        """The messages with an id in (after, last], oldest first, as (messages, after,
        scanned): Telegram has no message in (after, scanned] but those. A FloodWait is waited
        out and paging resumes after the last message received; the range is done when
        Telegram returns nothing after the last one."""
        while after < last:
            messages = self._client.iter_messages(
                entity,
                min_id=after,
                max_id=last + 1,
                reverse=True,
                wait_time=0,  # paced by the flood policy's history gate
            )
            page: list[Any] = []
            scanned = after
            flood: float | None = None
            while True:
                try:
                    message = await anext(messages)
                except StopAsyncIteration:
                    break
                except errors.FloodWaitError as exc:
                    flood = exc.seconds
                    break
                page.append(message)
                if len(page) == IDS_PER_CALL:
                    yield page, scanned, message.id
                    page, scanned = [], message.id
            if page:
                yield page, scanned, page[-1].id
                scanned = page[-1].id
            if flood is not None:
                await self._wait_flood(flood, during)
            elif scanned == after:
                yield [], after, last  # nothing more: no message in the rest of the range
                return
            after = scanned

    def _report_progress(self, channel_id: int, fetched: int) -> None:
        log.info("backfill_progress", extra={"channel_id": channel_id, "fetched": fetched})
        if self._on_backfill_progress is not None:
            self._on_backfill_progress(channel_id, fetched)

    async def _with_flood_wait(self, call: Callable[[], Any], during: str) -> Any:
        return await self._flood.call(during, call)

    async def _wait_flood(self, seconds: float, during: str) -> None:
        await self._flood.wait(seconds, during)

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())


async def _off_loop(call: Callable[..., T], *args: Any) -> T:
    """A blocking store call, run off the event loop (Telethon's updates keep flowing)."""
    return await asyncio.to_thread(call, *args)
