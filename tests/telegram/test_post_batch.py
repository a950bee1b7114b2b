"""The control port's ``post_batch``: many posts in one request, each pushed to the clients.

The load test's wire mode sends every post through this op and takes each post's send time
from its answer, so the answer must name the ids the clients receive, in order, with publish
times that do not run ahead of the clients.
"""

from __future__ import annotations

import time

import pytest

from tgstack_testing.telegram.control import ControlClient, ControlError

from .conftest import PHONE, ClientFactory
from .test_updates import listening

pytestmark = pytest.mark.anyio


async def test_a_batch_over_two_channels_reaches_the_client_in_order_with_ids_and_times(
    make_client: ClientFactory, control: ControlClient
) -> None:
    client, recorder, first = await listening(make_client, control)
    second = int(control.create_channel("Other", "other", [PHONE])["id"])
    await client.get_dialogs()
    before = time.time()

    answer = control.post_batch([(first, "a"), (second, "b"), (first, "c"), ("other", "d")])
    items = await recorder.wait_for(4)

    assert [message_id for message_id, _ in answer] == [2, 1, 3, 2]  # "seed" is first's id 1
    published = [at for _, at in answer]
    assert before <= published[0] <= published[1] <= published[2] <= published[3] <= time.time()
    assert sorted(items) == sorted(
        [("new", (2, "a")), ("new", (1, "b")), ("new", (3, "c")), ("new", (2, "d"))]
    )
    in_first = [text for _, (_, text) in items if text in ("a", "c")]
    assert in_first == ["a", "c"]  # in order within a channel
    info = {c["id"]: c for c in control.info()["channels"]}
    assert (info[first]["last_msg_id"], info[second]["last_msg_id"]) == (3, 2)


def test_a_batch_naming_an_unknown_channel_posts_nothing(control: ControlClient) -> None:
    channel = int(control.create_channel("Signals", "signals", [PHONE])["id"])

    with pytest.raises(ControlError, match="no channel"):
        control.post_batch([(channel, "kept back"), ("missing", "nowhere")])

    assert control.info()["channels"][0]["messages"] == 0
    assert control.post_batch([]) == []
