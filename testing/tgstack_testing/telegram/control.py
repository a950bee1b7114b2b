"""The control interface: one JSON object per line over a separate loopback TCP port.

Tests and demos drive the world through it (accounts, channels, posts, edits, deletions) and
switch faults on (FLOOD_WAIT, dropped connections, revoked keys, pts gaps). A request is
``{"op": name, ...arguments}``; the answer is ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": message}``. Invariant: every world change that a client could see is
published to connected clients before the answer is written.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .world import Channel, WorldError

if TYPE_CHECKING:
    # Only the serving side needs the server (and Telethon); the client stays light for the CLI.
    from .server import Server

REVOKE_REASONS = ("AUTH_KEY_UNREGISTERED", "SESSION_REVOKED")


class ControlError(Exception):
    """The server refused a control request; the message says why."""


def _channel_info(channel: Channel) -> dict[str, Any]:
    return {"id": channel.id, "title": channel.title, "username": channel.username,
            "pts": channel.pts, "last_msg_id": channel.last_msg_id,
            "messages": len(channel.posts), "members": channel.members}


class ControlHandler:
    """Executes control operations against a running `Server`."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.world = server.world

    def ops(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        return {
            "info": self.info,
            "channel": self.channel,
            "create_account": self.create_account,
            "create_channel": self.create_channel,
            "ensure_channel": self.ensure_channel,
            "post": self.post,
            "post_many": self.post_many,
            "messages": self.messages,
            "post_batch": self.post_batch,
            "edit": self.edit,
            "delete": self.delete,
            "flood": self.flood,
            "drop_connections": self.drop_connections,
            "revoke": self.revoke,
            "gap": self.gap,
            "updates_too_long": self.updates_too_long,
            "counters": self.counters,
        }

    async def info(self) -> dict[str, Any]:
        return {
            "host": self.server.host,
            "port": self.server.port,
            "dc_id": self.server.dc_id,
            "public_key": str(self.server.state_dir / "server_public.pem"),
            "accounts": [vars(a) for a in self.world.accounts.values()],
            "channels": [_channel_info(c) for c in self.world.channels.values()],
        }

    async def channel(self, channel: str | int) -> dict[str, Any]:
        """One channel by id, marked id or username, as `info` lists it."""
        return _channel_info(self.world.channel_by_ref(channel))

    async def create_account(self, phone: str, first_name: str = "",
                             username: str | None = None) -> dict[str, Any]:
        return vars(self.world.create_account(phone, first_name, username))

    async def create_channel(self, title: str, username: str | None = None,
                             members: list[str | int] | None = None) -> dict[str, Any]:
        channel = self.world.create_channel(title, username, members or [])
        return {"id": channel.id, "title": channel.title, "username": channel.username,
                "members": channel.members}

    async def ensure_channel(self, title: str, username: str | None = None,
                             members: list[str | int] | None = None,
                             id: int | None = None) -> dict[str, Any]:
        """The channel (by id, else username), created when missing, members added; ``changed``
        tells whether anything was (an idempotent step for deployments)."""
        channel, changed = self.world.ensure_channel(title, username, members or [], id)
        return {"id": channel.id, "title": channel.title, "username": channel.username,
                "members": channel.members, "messages": len(channel.posts),
                "last_msg_id": channel.last_msg_id, "changed": changed}

    async def post(self, channel: str | int, text: str, date: int | None = None,
                   id: int | None = None, reply_to: int | None = None) -> dict[str, Any]:
        """One post; with `reply_to`, a reply to that post of the same channel."""
        target = self.world.channel_by_ref(channel)
        post, event = self.world.post(target.id, text, date, id, reply_to)
        self.server.publish(target, event)
        return {"id": post.id, "pts": event.pts, "date": post.date, "reply_to": post.reply_to}

    async def post_many(self, channel: str | int, count: int, rate: float = 0.0,
                        text: str = "post {n}") -> dict[str, Any]:
        """Post `count` messages, `rate` per second (0: as fast as possible)."""
        target = self.world.channel_by_ref(channel)
        loop = asyncio.get_running_loop()
        started = loop.time()
        ids = []
        for n in range(count):
            if rate > 0:
                delay = started + n / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif n % 200 == 199:
                await asyncio.sleep(0)  # let the writers drain
            post, event = self.world.post(target.id, text.format(n=n + 1))
            self.server.publish(target, event)
            ids.append(post.id)
        return {"first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None,
                "seconds": loop.time() - started}

    async def messages(self, channel: str | int, limit: int = 100) -> list[dict[str, Any]]:
        """The channel's last `limit` posts still there, oldest first (what history shows)."""
        target = self.world.channel_by_ref(channel)
        return [vars(target.posts[i]) for i in sorted(target.posts)[-limit:]]

    async def post_batch(self, posts: list[list[Any]]) -> dict[str, Any]:
        """Post each ``[channel, text]`` of `posts`, in order, as fast as the server takes them.

        Answers ``{"posts": [[id, published_at], ...]}`` in the same order: the message id and
        the Unix time (float, the server's clock) at which the post's update was queued on every
        member's connection (written as soon as this request yields). A load generator paces its
        own requests and sends whatever is due in one request: one round trip, however many
        posts. Every channel is looked up before anything is posted.
        """
        targets = [self.world.channel_by_ref(channel) for channel, _ in posts]
        answer: list[list[float]] = []
        for n, (target, (_, text)) in enumerate(zip(targets, posts, strict=True)):
            if n % 200 == 199:
                await asyncio.sleep(0)  # let the writers drain
            post, event = self.world.post(target.id, str(text))
            self.server.publish(target, event)
            answer.append([post.id, time.time()])
        return {"posts": answer}

    async def edit(self, channel: str | int, id: int, text: str) -> dict[str, Any]:
        target = self.world.channel_by_ref(channel)
        post, event = self.world.edit(target.id, id, text)
        self.server.publish(target, event)
        return {"id": post.id, "pts": event.pts, "edit_date": post.edit_date}

    async def delete(self, channel: str | int, ids: list[int]) -> dict[str, Any]:
        target = self.world.channel_by_ref(channel)
        event = self.world.delete(target.id, ids)
        self.server.publish(target, event)
        return {"ids": event.ids, "pts": event.pts}

    async def flood(self, method: str, times: int = 1, seconds: int = 5,
                    after: int = 0) -> dict[str, Any]:
        """The next `times` calls of `method` (``messages.getHistory`` or ``getHistory``) fail
        with FLOOD_WAIT_<seconds>, once `after` calls have gone through."""
        from .server import Flood

        self.server.floods[method.lower()] = Flood(times, seconds, after)
        return {"method": method, "times": times, "seconds": seconds, "after": after}

    async def drop_connections(self) -> dict[str, Any]:
        return {"dropped": self.server.drop_connections()}

    async def revoke(self, phone: str | None = None, key_id: int | None = None,
                     reason: str = "AUTH_KEY_UNREGISTERED") -> dict[str, Any]:
        if reason not in REVOKE_REASONS:
            raise WorldError(f"reason must be one of {REVOKE_REASONS}, not {reason!r}")
        user_id = None
        if phone is not None:
            account = self.world.account_by_phone(phone)
            if account is None:
                raise WorldError(f"no account with phone {phone}")
            user_id = account.user_id
        return {"revoked": self.world.revoke(user_id, key_id, reason)}

    async def gap(self, channel: str | int, skip: int = 0, bump: int = 0) -> dict[str, Any]:
        """Open a pts gap: don't push the next `skip` events, and/or advance pts by `bump`."""
        target = self.world.channel_by_ref(channel)
        if skip:
            self.server.skip_pushes[target.id] = self.server.skip_pushes.get(target.id, 0) + skip
        if bump:
            self.world.bump_pts(target.id, bump)
        return {"pts": target.pts, "skipping": self.server.skip_pushes.get(target.id, 0)}

    async def updates_too_long(self, phone: str | None = None) -> dict[str, Any]:
        account = self.world.account_by_phone(phone) if phone else None
        return {"sent": self.server.push_too_long(account.user_id if account else None)}

    async def counters(self) -> dict[str, Any]:
        counters = self.server.counters
        return {
            "connections_open": len(self.server.connections),
            "connections_total": counters.connections_total,
            "handshakes": counters.handshakes,
            "pushes": counters.pushes,
            "requests": dict(counters.requests),
        }

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            op = self.ops().get(request.pop("op", None))
            if op is None:
                raise WorldError(f"unknown op; one of {sorted(self.ops())}")
            return {"ok": True, "result": await op(**request)}
        except (WorldError, TypeError, ValueError, AttributeError) as error:
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                answer = await self.handle_line(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def start_control(server: Server, host: str, port: int) -> asyncio.Server:
    handler = ControlHandler(server)
    return await asyncio.start_server(handler.serve_client, host, port, limit=2**24)


class ControlClient:
    """A blocking client of the control port, for tests, demos and the CLI."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rwb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, op: str, **arguments: Any) -> Any:
        self._file.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        self._file.flush()
        answer = json.loads(self._file.readline())
        if not answer["ok"]:
            raise ControlError(answer["error"])
        return answer["result"]

    def info(self) -> dict[str, Any]:
        return dict(self.request("info"))

    def channel(self, channel: str | int) -> dict[str, Any]:
        return dict(self.request("channel", channel=channel))

    def create_account(self, phone: str, first_name: str = "",
                       username: str | None = None) -> dict[str, Any]:
        return dict(self.request("create_account", phone=phone, first_name=first_name,
                                 username=username))

    def create_channel(self, title: str, username: str | None = None,
                       members: list[str | int] | None = None) -> dict[str, Any]:
        return dict(self.request("create_channel", title=title, username=username,
                                 members=members or []))

    def ensure_channel(self, title: str, username: str | None = None,
                       members: list[str | int] | None = None,
                       id: int | None = None) -> dict[str, Any]:
        return dict(self.request("ensure_channel", title=title, username=username,
                                 members=members or [], id=id))

    def post(self, channel: str | int, text: str, date: int | None = None,
             id: int | None = None, reply_to: int | None = None) -> dict[str, Any]:
        return dict(self.request("post", channel=channel, text=text, date=date, id=id,
                                 reply_to=reply_to))

    def post_many(self, channel: str | int, count: int, rate: float = 0.0,
                  text: str = "post {n}") -> dict[str, Any]:
        return dict(self.request("post_many", channel=channel, count=count, rate=rate,
                                 text=text))

    def messages(self, channel: str | int, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.request("messages", channel=channel, limit=limit))

    def post_batch(self, posts: Sequence[tuple[str | int, str]]) -> list[tuple[int, float]]:
        """Post each (channel, text) in order; each post's (message id, published at)."""
        answer = self.request("post_batch", posts=[[channel, text] for channel, text in posts])
        return [(int(id_), float(at)) for id_, at in answer["posts"]]

    def edit(self, channel: str | int, id: int, text: str) -> dict[str, Any]:
        return dict(self.request("edit", channel=channel, id=id, text=text))

    def delete(self, channel: str | int, ids: list[int]) -> dict[str, Any]:
        return dict(self.request("delete", channel=channel, ids=ids))

    def flood(self, method: str, times: int = 1, seconds: int = 5,
              after: int = 0) -> dict[str, Any]:
        return dict(self.request("flood", method=method, times=times, seconds=seconds,
                                 after=after))

    def drop_connections(self) -> int:
        return int(self.request("drop_connections")["dropped"])

    def revoke(self, phone: str | None = None, key_id: int | None = None,
               reason: str = "AUTH_KEY_UNREGISTERED") -> list[int]:
        return list(self.request("revoke", phone=phone, key_id=key_id, reason=reason)["revoked"])

    def gap(self, channel: str | int, skip: int = 0, bump: int = 0) -> dict[str, Any]:
        return dict(self.request("gap", channel=channel, skip=skip, bump=bump))

    def updates_too_long(self, phone: str | None = None) -> int:
        return int(self.request("updates_too_long", phone=phone)["sent"])

    def counters(self) -> dict[str, Any]:
        return dict(self.request("counters"))
