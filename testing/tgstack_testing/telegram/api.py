"""The RPC handlers: the subset of Telegram's API a user client needs to read channels.

`Api.call` takes one decoded request for one auth key and returns the serialised result, or
raises `RpcFailure` carrying Telegram's error code and message. Invariants, as on Telegram:
every method except the login and config ones needs an authorised key (401 otherwise); a
channel is only reachable with the access hash this account received (CHANNEL_INVALID);
wrapper methods (invokeWithLayer, initConnection, invokeWithoutUpdates, ...) are unwrapped;
methods not implemented here fail with 400 METHOD_INVALID.

Login: auth.sendCode accepts any phone number; auth.signIn with the code ``12345`` signs in,
creating the account on its first sign-in (there is no sign-up step and no 2FA password).
getDialogs answers every channel of the account at once (messages.dialogs, no paging).
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from telethon.tl import functions as fn
from telethon.tl import types as tl
from telethon.tl.tlobject import TLObject

from .paging import history_window
from .world import Account, AuthKeyRecord, Channel, Event, Post, World

TEST_CODE = "12345"
VECTOR_ID = 0x1CB5C415
DIFFERENCE_TIMEOUT = 30
WRAPPERS = (
    fn.InvokeWithLayerRequest,
    fn.InitConnectionRequest,
    fn.InvokeWithoutUpdatesRequest,
    fn.InvokeAfterMsgRequest,
    fn.InvokeAfterMsgsRequest,
    fn.InvokeWithMessagesRangeRequest,
    fn.InvokeWithTakeoutRequest,
)
NO_AUTH_METHODS = {
    "help.getConfig",
    "help.getNearestDc",
    "auth.sendCode",
    "auth.signIn",
    "auth.logOut",
}


class RpcFailure(Exception):
    """An rpc_error answer: Telegram's numeric code and its upper-case message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class Hooks(Protocol):
    """What the API needs from the running server."""

    dc_id: int
    host: str
    port: int

    def take_flood(self, method: str) -> int | None: ...

    def count_request(self, method: str) -> None: ...


def method_name(request: TLObject) -> str:
    """The TL name of a request class, e.g. ``messages.getHistory``."""
    cls = type(request)
    module = cls.__module__.rsplit(".", 1)[-1]
    name = cls.__name__.removesuffix("Request")
    name = name[:1].lower() + name[1:]
    return name if module == "functions" else f"{module}.{name}"


def vector(items: list[TLObject]) -> bytes:
    return struct.pack("<Ii", VECTOR_ID, len(items)) + b"".join(bytes(i) for i in items)


class Raw(TLObject):  # type: ignore[misc]
    """Pre-serialised TL, for constructors Telethon only lets us build with extra baggage."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _bytes(self) -> bytes:
        return self.data


def message_empty(msg_id: int) -> Raw:
    # Telethon patches MessageEmpty into its high-level Message, which needs a client to build.
    return Raw(struct.pack("<IIi", tl.MessageEmpty.CONSTRUCTOR_ID, 0, msg_id))


def unwrap(request: Any) -> Any:
    while isinstance(request, WRAPPERS):
        request = request.query
    return request


@dataclass
class Call:
    """One request in flight: the key it came on and the account it is authorised as."""

    record: AuthKeyRecord
    account: Account | None


@dataclass
class Api:
    world: World
    hooks: Hooks
    _codes: dict[str, str] = field(default_factory=dict)

    def call(self, record: AuthKeyRecord, request: Any) -> bytes:
        request = unwrap(request)
        name = method_name(request)
        self.hooks.count_request(name)
        flood = self.hooks.take_flood(name)
        if flood is not None:
            raise RpcFailure(420, f"FLOOD_WAIT_{flood}")
        handler = self._handlers().get(type(request))
        if handler is None:
            raise RpcFailure(400, "METHOD_INVALID")
        account = self.world.accounts.get(record.user_id) if record.user_id else None
        if name not in NO_AUTH_METHODS and account is None:
            raise RpcFailure(401, record.revoked or "AUTH_KEY_UNREGISTERED")
        result = handler(Call(record, account), request)
        return result if isinstance(result, bytes) else bytes(result)

    def _handlers(self) -> dict[type, Callable[[Call, Any], TLObject | bytes]]:
        return {
            fn.help.GetConfigRequest: self.get_config,
            fn.help.GetNearestDcRequest: self.get_nearest_dc,
            fn.auth.SendCodeRequest: self.send_code,
            fn.auth.SignInRequest: self.sign_in,
            fn.auth.LogOutRequest: self.log_out,
            fn.users.GetUsersRequest: self.get_users,
            fn.users.GetFullUserRequest: self.get_full_user,
            fn.messages.GetDialogsRequest: self.get_dialogs,
            fn.contacts.ResolveUsernameRequest: self.resolve_username,
            fn.channels.GetChannelsRequest: self.get_channels,
            fn.channels.GetFullChannelRequest: self.get_full_channel,
            fn.channels.GetMessagesRequest: self.get_messages,
            fn.messages.GetHistoryRequest: self.get_history,
            fn.updates.GetStateRequest: self.get_state,
            fn.updates.GetDifferenceRequest: self.get_difference,
            fn.updates.GetChannelDifferenceRequest: self.get_channel_difference,
        }

    # TL builders ----------------------------------------------------------------------------

    def user(self, account: Account, viewer: Account) -> tl.User:
        return tl.User(
            id=account.user_id,
            is_self=account.user_id == viewer.user_id,
            access_hash=self.world.access_hash(account.user_id, viewer.user_id),
            first_name=account.first_name,
            username=account.username,
            phone=account.phone,
            status=tl.UserStatusRecently(),
        )

    def channel(self, channel: Channel, viewer: Account) -> tl.Channel:
        return tl.Channel(
            id=channel.id,
            title=channel.title,
            photo=tl.ChatPhotoEmpty(),
            date=channel.date,
            broadcast=True,
            left=viewer.user_id not in channel.members,
            access_hash=self.world.access_hash(channel.id, viewer.user_id),
            username=channel.username,
            participants_count=len(channel.members),
        )

    @staticmethod
    def message(channel: Channel, post: Post) -> tl.Message:
        return tl.Message(
            id=post.id,
            peer_id=tl.PeerChannel(channel.id),
            date=post.date,
            message=post.text,
            post=True,
            edit_date=post.edit_date,
            reply_to=None if post.reply_to is None
            else tl.MessageReplyHeader(reply_to_msg_id=post.reply_to),
        )

    def dialog(self, channel: Channel) -> tl.Dialog:
        top = max(channel.posts, default=0)
        return tl.Dialog(
            peer=tl.PeerChannel(channel.id),
            top_message=top,
            read_inbox_max_id=top,
            read_outbox_max_id=top,
            unread_count=0,
            unread_mentions_count=0,
            unread_reactions_count=0,
            unread_poll_votes_count=0,
            notify_settings=tl.PeerNotifySettings(),
            pts=channel.pts,
        )

    def update_for(self, channel: Channel, event: Event) -> tl.TypeUpdate | None:
        """The pushed update for one pts event, or None when it is invisible."""
        if event.kind == "new" and event.ids[0] in channel.posts:
            post = channel.posts[event.ids[0]]
            return tl.UpdateNewChannelMessage(self.message(channel, post), event.pts, 1)
        if event.kind == "edit" and event.ids[0] in channel.posts:
            post = channel.posts[event.ids[0]]
            return tl.UpdateEditChannelMessage(self.message(channel, post), event.pts, 1)
        if event.kind == "delete":
            return tl.UpdateDeleteChannelMessages(channel.id, event.ids, event.pts, len(event.ids))
        return None

    def updates(self, channel: Channel, event: Event, viewer: Account) -> bytes | None:
        update = self.update_for(channel, event)
        if update is None:
            return None
        return bytes(
            tl.Updates(
                updates=[update],
                users=[],
                chats=[self.channel(channel, viewer)],
                date=int(time.time()),
                seq=0,
            )
        )

    # access rules ---------------------------------------------------------------------------

    def reachable(self, call: Call, peer: Any) -> Channel:
        """The channel behind an InputChannel/InputPeerChannel, if this account may use it."""
        assert call.account is not None
        if not isinstance(peer, (tl.InputChannel, tl.InputPeerChannel)):
            raise RpcFailure(400, "CHANNEL_INVALID")
        channel = self.world.channels.get(peer.channel_id)
        if channel is None or peer.access_hash != self.world.access_hash(
            channel.id, call.account.user_id
        ):
            raise RpcFailure(400, "CHANNEL_INVALID")
        if channel.username is None and call.account.user_id not in channel.members:
            raise RpcFailure(400, "CHANNEL_PRIVATE")
        return channel

    def _me(self, call: Call) -> Account:
        assert call.account is not None
        return call.account

    # help and auth --------------------------------------------------------------------------

    def get_config(self, call: Call, request: Any) -> TLObject:
        now = int(time.time())
        options = [
            tl.DcOption(id=dc, ip_address=self.hooks.host, port=self.hooks.port)
            for dc in range(1, 6)
        ]
        return tl.Config(
            date=now, expires=now + 3600, test_mode=False, this_dc=self.hooks.dc_id,
            dc_options=options, dc_txt_domain_name="localhost", chat_size_max=200,
            megagroup_size_max=200000, forwarded_count_max=100, online_update_period_ms=210000,
            offline_blur_timeout_ms=5000, offline_idle_timeout_ms=30000,
            online_cloud_timeout_ms=300000, notify_cloud_delay_ms=30000,
            notify_default_delay_ms=1500, push_chat_period_ms=60000, push_chat_limit=2,
            edit_time_limit=172800, revoke_time_limit=2147483647,
            revoke_pm_time_limit=2147483647, rating_e_decay=2419200, stickers_recent_limit=200,
            channels_read_media_period=604800, call_receive_timeout_ms=20000,
            call_ring_timeout_ms=90000, call_connect_timeout_ms=30000,
            call_packet_timeout_ms=10000, me_url_prefix="https://t.me/",
            caption_length_max=1024, message_length_max=4096, webfile_dc_id=self.hooks.dc_id,
        )

    def get_nearest_dc(self, call: Call, request: Any) -> TLObject:
        return tl.NearestDc(country="ZZ", this_dc=self.hooks.dc_id, nearest_dc=self.hooks.dc_id)

    def send_code(self, call: Call, request: Any) -> TLObject:
        phone = str(request.phone_number).lstrip("+")
        if not phone.isdigit():
            raise RpcFailure(400, "PHONE_NUMBER_INVALID")
        code_hash = secrets.token_hex(8)
        self._codes[phone] = code_hash
        return tl.auth.SentCode(type=tl.auth.SentCodeTypeApp(length=len(TEST_CODE)),
                                phone_code_hash=code_hash)

    def sign_in(self, call: Call, request: Any) -> TLObject:
        phone = str(request.phone_number).lstrip("+")
        if self._codes.get(phone) != request.phone_code_hash:
            raise RpcFailure(400, "PHONE_CODE_EXPIRED")
        if request.phone_code != TEST_CODE:
            raise RpcFailure(400, "PHONE_CODE_INVALID")
        del self._codes[phone]
        # Unknown phones become accounts on their first sign-in (no separate sign-up step).
        account = self.world.create_account(phone)
        call.record.user_id = account.user_id
        call.record.revoked = None
        self.world.dirty = True
        return tl.auth.Authorization(user=self.user(account, account))

    def log_out(self, call: Call, request: Any) -> TLObject:
        call.record.user_id = None
        self.world.dirty = True
        return tl.auth.LoggedOut()

    # users ----------------------------------------------------------------------------------

    def _account_for(self, call: Call, peer: Any) -> Account:
        me = self._me(call)
        if isinstance(peer, (tl.InputUserSelf, tl.InputPeerSelf)):
            return me
        if isinstance(peer, (tl.InputUser, tl.InputPeerUser)):
            other = self.world.accounts.get(peer.user_id)
            if other and peer.access_hash == self.world.access_hash(other.user_id, me.user_id):
                return other
        raise RpcFailure(400, "USER_ID_INVALID")

    def get_users(self, call: Call, request: Any) -> bytes:
        me = self._me(call)
        users: list[TLObject] = []
        for peer in request.id:
            try:
                users.append(self.user(self._account_for(call, peer), me))
            except RpcFailure:
                users.append(tl.UserEmpty(getattr(peer, "user_id", 0)))
        return vector(users)

    def get_full_user(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        account = self._account_for(call, request.id)
        full = tl.UserFull(
            id=account.user_id,
            settings=tl.PeerSettings(),
            notify_settings=tl.PeerNotifySettings(),
            common_chats_count=0,
        )
        return tl.users.UserFull(full_user=full, chats=[], users=[self.user(account, me)])

    # dialogs and channels -------------------------------------------------------------------

    def get_dialogs(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        channels = [] if request.folder_id == 1 else self.world.channels_of(me.user_id)
        channels.sort(key=lambda c: c.posts[max(c.posts)].date if c.posts else c.date,
                      reverse=True)
        tops = [self.message(c, c.posts[max(c.posts)]) for c in channels if c.posts]
        return tl.messages.Dialogs(
            dialogs=[self.dialog(c) for c in channels],
            messages=tops,
            chats=[self.channel(c, me) for c in channels],
            users=[],
        )

    def resolve_username(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        name = str(request.username).lower()
        for channel in self.world.channels.values():
            if channel.username and channel.username.lower() == name:
                return tl.contacts.ResolvedPeer(
                    peer=tl.PeerChannel(channel.id), chats=[self.channel(channel, me)], users=[]
                )
        for account in self.world.accounts.values():
            if account.username and account.username.lower() == name:
                return tl.contacts.ResolvedPeer(
                    peer=tl.PeerUser(account.user_id), chats=[], users=[self.user(account, me)]
                )
        raise RpcFailure(400, "USERNAME_NOT_OCCUPIED")

    def get_channels(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        return tl.messages.Chats(
            chats=[self.channel(self.reachable(call, peer), me) for peer in request.id]
        )

    def get_full_channel(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        channel = self.reachable(call, request.channel)
        top = max(channel.posts, default=0)
        full = tl.ChannelFull(
            id=channel.id, about="", read_inbox_max_id=top, read_outbox_max_id=top,
            unread_count=0, chat_photo=tl.PhotoEmpty(id=0),
            notify_settings=tl.PeerNotifySettings(), bot_info=[], pts=channel.pts,
            participants_count=len(channel.members),
        )
        return tl.messages.ChatFull(full_chat=full, chats=[self.channel(channel, me)], users=[])

    def _channel_messages(self, call: Call, channel: Channel, ids: list[int]) -> TLObject:
        messages: list[TLObject] = [
            self.message(channel, channel.posts[i]) if i in channel.posts else message_empty(i)
            for i in ids
        ]
        return tl.messages.ChannelMessages(
            pts=channel.pts, count=len(channel.posts), messages=messages, topics=[],
            chats=[self.channel(channel, self._me(call))], users=[],
        )

    def get_messages(self, call: Call, request: Any) -> TLObject:
        channel = self.reachable(call, request.channel)
        ids = []
        for wanted in request.id:
            if not isinstance(wanted, tl.InputMessageID):
                raise RpcFailure(400, "MESSAGE_IDS_EMPTY")
            ids.append(wanted.id)
        return self._channel_messages(call, channel, ids)

    def get_history(self, call: Call, request: Any) -> TLObject:
        channel = self.reachable(call, request.peer)
        ids_desc = channel.ids_desc()
        offset_date = request.offset_date
        window = history_window(
            ids_desc,
            [channel.posts[i].date for i in ids_desc],
            offset_id=request.offset_id,
            offset_date=int(offset_date.timestamp()) if offset_date else 0,
            add_offset=request.add_offset,
            limit=request.limit,
            max_id=request.max_id,
            min_id=request.min_id,
        )
        return self._channel_messages(call, channel, window)

    # updates --------------------------------------------------------------------------------

    def get_state(self, call: Call, request: Any) -> TLObject:
        return tl.updates.State(pts=1, qts=0, date=int(time.time()), seq=0, unread_count=0)

    def get_difference(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        since = int(request.date.timestamp()) if request.date else 0
        channels = [c for c in self.world.channels_of(me.user_id) if c.updated >= since]
        state = tl.updates.State(pts=1, qts=0, date=int(time.time()), seq=0, unread_count=0)
        if not channels:
            return tl.updates.DifferenceEmpty(date=state.date, seq=0)
        # Account-level state never moves here; channel news is announced the way Telegram
        # does after a long absence: updateChannelTooLong, so the client asks each channel.
        return tl.updates.Difference(
            new_messages=[], new_encrypted_messages=[],
            other_updates=[tl.UpdateChannelTooLong(c.id, c.pts) for c in channels],
            chats=[self.channel(c, me) for c in channels], users=[self.user(me, me)],
            state=state,
        )

    def get_channel_difference(self, call: Call, request: Any) -> TLObject:
        me = self._me(call)
        channel = self.reachable(call, request.channel)
        pts = request.pts
        if pts <= 0 or pts > channel.pts:
            raise RpcFailure(400, "PERSISTENT_TIMESTAMP_INVALID")
        if pts == channel.pts:
            return tl.updates.ChannelDifferenceEmpty(pts=pts, final=True,
                                                     timeout=DIFFERENCE_TIMEOUT)
        limit = max(1, min(request.limit or 100, 100000))
        chats = [self.channel(channel, me)]
        if channel.pts - pts > limit:
            newest = channel.ids_desc()[:limit]
            return tl.updates.ChannelDifferenceTooLong(
                dialog=self.dialog(channel),
                messages=[self.message(channel, channel.posts[i]) for i in newest],
                chats=chats, users=[], final=True, timeout=DIFFERENCE_TIMEOUT,
            )
        new_messages: list[TLObject] = []
        other: list[TLObject] = []
        created = set()
        for event in channel.events_after(pts):
            if event.kind == "new":
                created.add(event.ids[0])
                if event.ids[0] in channel.posts:
                    new_messages.append(self.message(channel, channel.posts[event.ids[0]]))
            elif event.kind == "edit" and event.ids[0] not in created:
                update = self.update_for(channel, event)
                if update is not None:
                    other.append(update)
            elif event.kind == "delete":
                other.append(self.update_for(channel, event))
        return tl.updates.ChannelDifference(
            pts=channel.pts, new_messages=new_messages, other_updates=other, chats=chats,
            users=[], final=True, timeout=DIFFERENCE_TIMEOUT,
        )
