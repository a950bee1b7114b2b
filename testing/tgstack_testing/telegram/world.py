"""The server's state: accounts, channels with their posts and pts, auth keys and sessions.

Persisted as one JSON file written atomically (temporary file, fsync, rename), so a restarted
server accepts the same auth keys and serves the same channels. Invariants, as on Telegram:
message ids and pts only grow, per channel; every account sees a channel under its own
access hash (derived from a per-world secret), and a channel is reachable only with that hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

STATE_FILE = "state.json"
FIRST_USER_ID = 7_000_000_001
FIRST_CHANNEL_ID = 1_900_000_001
EventKind = Literal["new", "edit", "delete", "noop"]


class WorldError(Exception):
    """A control request names something that does not exist or is invalid."""


@dataclass
class Account:
    user_id: int
    phone: str
    first_name: str
    username: str | None = None


@dataclass
class Post:
    id: int
    date: int
    text: str
    edit_date: int | None = None
    reply_to: int | None = None  # the post of the same channel this one replies to


@dataclass
class Event:
    """One pts step of a channel: a post, an edit, a deletion, or an invisible bump."""

    pts: int
    kind: EventKind
    ids: list[int]


@dataclass
class Channel:
    id: int
    title: str
    username: str | None
    date: int
    members: list[int]
    pts: int = 1
    last_msg_id: int = 0
    updated: int = 0
    posts: dict[int, Post] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def ids_desc(self) -> list[int]:
        return sorted(self.posts, reverse=True)

    def events_after(self, pts: int) -> list[Event]:
        return [event for event in self.events if event.pts > pts]


@dataclass
class AuthKeyRecord:
    key_id: int
    key: bytes
    salt: int
    user_id: int | None = None
    revoked: str | None = None
    sessions: list[int] = field(default_factory=list)


def key_id_of(key: bytes) -> int:
    """Telegram's auth_key_id: the low 64 bits of SHA1(key), little-endian, unsigned."""
    digest = hashlib.sha1(key).digest()  # noqa: S324 - the key id is defined with SHA1
    return int(struct.unpack("<Q", digest[12:20])[0])


class World:
    """All state of the fake Telegram, with the operations the API and the control use."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.secret = secrets.token_bytes(16)
        self.accounts: dict[int, Account] = {}
        self.channels: dict[int, Channel] = {}
        self.auth_keys: dict[int, AuthKeyRecord] = {}
        self.dirty = False

    # accounts -------------------------------------------------------------------------------

    def account_by_phone(self, phone: str) -> Account | None:
        wanted = phone.lstrip("+")
        return next((a for a in self.accounts.values() if a.phone == wanted), None)

    def create_account(
        self, phone: str, first_name: str = "", username: str | None = None
    ) -> Account:
        existing = self.account_by_phone(phone)
        if existing:
            return existing
        user_id = max(self.accounts, default=FIRST_USER_ID - 1) + 1
        account = Account(user_id, phone.lstrip("+"), first_name or f"User {phone[-4:]}", username)
        self.accounts[user_id] = account
        self.dirty = True
        return account

    def resolve_member(self, who: str | int) -> Account:
        """An account by user id or phone; unknown phones become new accounts."""
        if isinstance(who, int) or (who.isdigit() and int(who) in self.accounts):
            account = self.accounts.get(int(who))
            if account is None:
                raise WorldError(f"no account with user id {who}")
            return account
        return self.create_account(str(who))

    def access_hash(self, peer_id: int, viewer_id: int) -> int:
        """The access hash `viewer_id` sees for `peer_id`; differs per viewer, like Telegram's."""
        digest = hmac.new(self.secret, f"{peer_id}:{viewer_id}".encode(), hashlib.sha256).digest()
        return int(struct.unpack("<q", digest[:8])[0]) or 1

    # channels -------------------------------------------------------------------------------

    def create_channel(
        self,
        title: str,
        username: str | None,
        members: list[str | int],
        channel_id: int | None = None,
    ) -> Channel:
        """A new channel; `channel_id` (bare, as in -100<id>) takes a given id, otherwise the
        next free one."""
        if username and any(c.username == username for c in self.channels.values()):
            raise WorldError(f"username {username!r} is taken")
        if channel_id is None:
            channel_id = max(self.channels, default=FIRST_CHANNEL_ID - 1) + 1
        elif not 0 < channel_id < 10**12:
            raise WorldError(f"channel id {channel_id} is not a bare channel id (1 .. 10^12 - 1)")
        elif channel_id in self.channels:
            raise WorldError(f"channel id {channel_id} is taken")
        member_ids = [self.resolve_member(m).user_id for m in members]
        channel = Channel(channel_id, title, username, int(time.time()), member_ids)
        self.channels[channel_id] = channel
        self.dirty = True
        return channel

    def ensure_channel(
        self,
        title: str,
        username: str | None,
        members: list[str | int],
        channel_id: int | None = None,
    ) -> tuple[Channel, bool]:
        """The channel with this id (or username), created when missing, with every member
        added; True when anything changed. Replaying the same request changes nothing."""
        existing = None
        if channel_id is not None:
            existing = self.channels.get(channel_id)
        elif username:
            existing = next((c for c in self.channels.values() if c.username == username), None)
        if existing is None:
            return self.create_channel(title, username, members, channel_id), True
        if username and existing.username != username:
            raise WorldError(f"channel {existing.id} is @{existing.username}, not @{username}")
        added = [
            account.user_id
            for account in (self.resolve_member(m) for m in members)
            if account.user_id not in existing.members
        ]
        existing.members.extend(added)
        if added:
            self.dirty = True
        return existing, bool(added)

    def channel(self, channel_id: int) -> Channel:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise WorldError(f"no channel with id {channel_id}")
        return channel

    def channel_by_ref(self, ref: str | int) -> Channel:
        """A channel by id or username (with or without @)."""
        if isinstance(ref, int) or str(ref).lstrip("-").isdigit():
            return self.channel(abs(int(ref)) % 10**12 if int(ref) < 0 else int(ref))
        name = str(ref).lstrip("@").lower()
        for channel in self.channels.values():
            if channel.username and channel.username.lower() == name:
                return channel
        raise WorldError(f"no channel named {ref!r}")

    def channels_of(self, user_id: int) -> list[Channel]:
        return [c for c in self.channels.values() if user_id in c.members]

    def _event(self, channel: Channel, kind: EventKind, ids: list[int], steps: int = 1) -> Event:
        channel.pts += steps
        channel.updated = int(time.time())
        event = Event(channel.pts, kind, ids)
        channel.events.append(event)
        self.dirty = True
        return event

    def post(
        self,
        channel_id: int,
        text: str,
        date: int | None = None,
        message_id: int | None = None,
        reply_to: int | None = None,
    ) -> tuple[Post, Event]:
        """A new post with the next id, or with `message_id` when that is above every id the
        channel has had (seeding a history with known ids; ids still only grow). With
        `reply_to`, the post replies to that post of the channel, which must still be there
        (Telegram refuses a reply to a missing message)."""
        channel = self.channel(channel_id)
        if reply_to is not None and (
            isinstance(reply_to, bool) or not isinstance(reply_to, int)
            or reply_to not in channel.posts
        ):
            raise WorldError(f"channel {channel_id} has no message {reply_to!r} to reply to")
        if message_id is None:
            channel.last_msg_id += 1
        elif message_id <= channel.last_msg_id:
            raise WorldError(
                f"message id {message_id} is not above the channel's last id {channel.last_msg_id}"
            )
        else:
            channel.last_msg_id = message_id
        post = Post(channel.last_msg_id, date or int(time.time()), text, reply_to=reply_to)
        channel.posts[post.id] = post
        return post, self._event(channel, "new", [post.id])

    def edit(self, channel_id: int, msg_id: int, text: str) -> tuple[Post, Event]:
        channel = self.channel(channel_id)
        post = channel.posts.get(msg_id)
        if post is None:
            raise WorldError(f"channel {channel_id} has no message {msg_id}")
        post.text = text
        post.edit_date = max(int(time.time()), post.date)
        return post, self._event(channel, "edit", [msg_id])

    def delete(self, channel_id: int, msg_ids: list[int]) -> Event:
        channel = self.channel(channel_id)
        gone = [i for i in msg_ids if channel.posts.pop(i, None) is not None]
        if not gone:
            raise WorldError(f"channel {channel_id} has none of the messages {msg_ids}")
        return self._event(channel, "delete", gone, steps=len(gone))

    def bump_pts(self, channel_id: int, steps: int) -> Event:
        """Advance pts without a visible change, as Telegram does for events a user cannot see."""
        return self._event(self.channel(channel_id), "noop", [], steps=steps)

    # auth keys ------------------------------------------------------------------------------

    def add_auth_key(self, key: bytes, salt: int) -> AuthKeyRecord:
        record = AuthKeyRecord(key_id_of(key), key, salt)
        self.auth_keys[record.key_id] = record
        self.dirty = True
        return record

    def auth_key(self, key_id: int) -> AuthKeyRecord | None:
        return self.auth_keys.get(key_id)

    def revoke(self, user_id: int | None, key_id: int | None, reason: str) -> list[int]:
        """Revoke keys of an account (or one key); their next request fails with `reason`."""
        revoked = []
        for record in self.auth_keys.values():
            if (key_id is not None and record.key_id == key_id) or (
                key_id is None and user_id is not None and record.user_id == user_id
            ):
                record.revoked = reason
                record.user_id = None
                revoked.append(record.key_id)
        self.dirty = True
        return revoked

    # persistence ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "secret": self.secret.hex(),
            "accounts": [asdict(a) for a in self.accounts.values()],
            "channels": [
                {**asdict(c), "posts": [asdict(p) for p in c.posts.values()]}
                for c in self.channels.values()
            ],
            "auth_keys": [{**asdict(k), "key": k.key.hex()} for k in self.auth_keys.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> World:
        world = cls(path)
        world.secret = bytes.fromhex(data["secret"])
        world.accounts = {a["user_id"]: Account(**a) for a in data["accounts"]}
        for raw in data["channels"]:
            posts = {p["id"]: Post(**p) for p in raw.pop("posts")}
            events = [Event(**e) for e in raw.pop("events")]
            channel = Channel(**raw, posts=posts, events=events)
            world.channels[channel.id] = channel
        for raw in data["auth_keys"]:
            record = AuthKeyRecord(**{**raw, "key": bytes.fromhex(raw["key"])})
            world.auth_keys[record.key_id] = record
        return world

    @classmethod
    def load(cls, state_dir: Path) -> World:
        path = state_dir / STATE_FILE
        if path.exists():
            return cls.from_json(json.loads(path.read_text()), path)
        return cls(path)

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Auth keys live in this file: only the server's user may read it.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(self.to_json(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        self.dirty = False
