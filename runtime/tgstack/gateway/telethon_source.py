"""The Telethon source: live NewMessage/MessageEdited/MessageDeleted events plus gap backfill.

The client is non-interactive: the session is made once by ``tgstack login``. At start we
connect, check ``is_user_authorized()`` and fail fast with one clear line when the session is
missing or revoked. Each channel is resolved once and cached. FloodWait follows the
gateway's one policy (tgstack.gateway.flood): waited out in place, logged and counted, a
bounded number of times; a channel whose call gives up is tried again next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from telethon import TelegramClient, errors, events, utils
from telethon.tl import types

from tgstack.gateway.events import MessageEvent
from tgstack.gateway.flood import FloodPolicy, FloodWaitExceeded, FloodWaitObserver
from tgstack.models import MessageRecord

log = logging.getLogger("tgstack.gateway.telethon")

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


class CursorStore(Protocol):
    def channel_cursors(self) -> dict[int, int]: ...


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


def record_from_message(message: types.Message, *, source: str = "user_client") -> MessageRecord:
    """Map a Telethon message to our record. A media post's text is stored as its caption."""
    channel_id = utils.get_peer_id(message.peer_id)
    media_type, media_refs = _media_type(message.media)
    raw = message.message or None
    thread_id = None
    reply_to = getattr(message, "reply_to", None)
    if reply_to is not None and getattr(reply_to, "forum_topic", False):
        thread_id = reply_to.reply_to_top_id or reply_to.reply_to_msg_id
    return MessageRecord.create(
        channel_id,
        message.id,
        message.date,
        text=None if media_type else raw,
        caption=raw if media_type else None,
        media_type=media_type,
        media_refs=media_refs,
        thread_id=thread_id,
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
        cursors: CursorStore,
        on_flood_wait: FloodWaitObserver | None = None,
        on_backfill_progress: Callable[[int, int], None] | None = None,
        flood: FloodPolicy | None = None,
    ) -> None:
        self._client = client
        self._channels = list(channels)
        self._sink = sink
        self._cursors = cursors
        self._on_flood_wait = on_flood_wait
        self._flood = flood or FloodPolicy(observer=on_flood_wait)
        self._on_backfill_progress = on_backfill_progress
        self._entities: dict[int, Any] = {}
        self._dialogs_loaded = False

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
                log.warning("channel not resolved yet", extra=extra)
        chats = list(self._channels)
        self._client.add_event_handler(self.on_new_message, events.NewMessage(chats=chats))
        self._client.add_event_handler(self.on_message_edited, events.MessageEdited(chats=chats))
        self._client.add_event_handler(self.on_message_deleted, events.MessageDeleted())
        log.info("telegram source started", extra={"channels": len(chats)})

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
        """Fetch every post newer than each channel's cursor, oldest first. Returns the count."""
        cursors = self._cursors.channel_cursors()
        total = 0
        for channel_id in self._channels:
            try:
                total += await self.backfill_channel(channel_id, cursors.get(channel_id, 0))
            except FloodWaitExceeded as exc:  # the other channels go on; this one next round
                extra = {"channel_id": channel_id, "error": str(exc)}
                log.warning("backfill given up", extra=extra)
        return total

    async def backfill_channel(self, channel_id: int, cursor: int) -> int:
        entity = self._entities.get(channel_id) or await self._resolve(channel_id)
        fetched = 0
        last_report = time.monotonic()
        while True:
            try:
                async for message in self._client.iter_messages(
                    entity, min_id=cursor, reverse=True, wait_time=0  # paced by the history gate
                ):
                    if not isinstance(message, types.Message):
                        continue  # service messages (joins, pins) carry no post
                    self._sink(MessageEvent.new(record_from_message(message, source="backfill")))
                    cursor = max(cursor, message.id)
                    fetched += 1
                    if time.monotonic() - last_report >= 5:
                        last_report = time.monotonic()
                        self._report_progress(channel_id, fetched)
                break
            except errors.FloodWaitError as exc:
                await self._wait_flood(exc.seconds, f"backfill {channel_id}")
        self._report_progress(channel_id, fetched)
        log.info(
            "backfill done", extra={"channel_id": channel_id, "fetched": fetched, "cursor": cursor}
        )
        return fetched

    def _report_progress(self, channel_id: int, fetched: int) -> None:
        log.info("backfill progress", extra={"channel_id": channel_id, "fetched": fetched})
        if self._on_backfill_progress is not None:
            self._on_backfill_progress(channel_id, fetched)

    async def _with_flood_wait(self, call: Callable[[], Any], during: str) -> Any:
        return await self._flood.call(during, call)

    async def _wait_flood(self, seconds: float, during: str) -> None:
        await self._flood.wait(seconds, during)

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected())
