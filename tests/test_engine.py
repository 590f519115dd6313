"""One contract suite for every engine: memory, Redis on fakeredis, Redis on a real redis-server.

The Redis runs use a unique key prefix per test, so they never collide and nothing is flushed.
Several engines of one test share their storage (one MemoryStore, or one Redis), as broker
processes sharing a Redis do. Only the tests of the Redis key layout and of the pub/sub
connection (which the memory engine does not have) run on the Redis engines alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from broker.engine import live_feed as live_feed_module
from broker.engine import redis_layout
from broker.engine.base import (
    AppendResult,
    ChannelCancelled,
    ChannelEnded,
    ChannelExists,
    ChannelNotFound,
    Engine,
    Limits,
)
from broker.engine.memory import MemoryEngine, MemoryStore
from broker.engine.redis import RedisEngine
from broker.events import Event, EventType, pack, parse_event_id, unpack

ENGINES = ["memory", "fakeredis", "redis"]
REDIS_ENGINES = ["fakeredis", "redis"]


class Recorder:
    """The `deliver` callback: what the engine handed to the relay, per channel."""

    def __init__(self) -> None:
        self.events: dict[str, list[Event]] = defaultdict(list)
        self.gone: list[str] = []
        self.calls = 0

    def __call__(self, channel_id: str, events: Sequence[Event] | None) -> None:
        self.calls += 1
        if events is None:
            self.gone.append(channel_id)
        else:
            assert events, "deliver() must not be called with an empty batch"
            self.events[channel_id].extend(events)

    def ids(self, channel_id: str) -> list[str]:
        return [e.id for e in self.events[channel_id]]


@dataclass
class Backend:
    kind: str
    prefix: str
    client: Redis | None  # a plain client on the same data (None for memory)
    new_client: Callable[[], Redis] | None
    engines: list[Engine] = field(default_factory=list)
    store: MemoryStore = field(default_factory=MemoryStore)  # shared by memory engines

    async def engine(self, limits: Limits | None = None) -> tuple[Engine, Recorder]:
        limits = limits or Limits()
        engine: Engine
        if self.kind == "memory":
            engine = MemoryEngine(limits, store=self.store)
        else:
            assert self.new_client is not None
            engine = RedisEngine(limits, prefix=self.prefix, client=self.new_client())
        recorder = Recorder()
        await engine.start(recorder)
        self.engines.append(engine)
        return engine, recorder

    async def outside_append(
        self,
        channel_id: str,
        items: Sequence[tuple[EventType, bytes]],
        *,
        writer: str | None = None,
        seq: int | None = None,
    ) -> AppendResult:
        """Append as a writer outside any broker does: straight into Redis with a plain client
        (what the worker library does), or through the shared store for the memory engine."""
        if self.kind == "memory":
            outsider = MemoryEngine(Limits(), store=self.store)  # never started: relays nothing
            return await outsider.append(channel_id, items, writer=writer, seq=seq)
        assert self.new_client is not None
        return await redis_layout.append_events(
            self.new_client(), self.prefix, channel_id, items, writer=writer, seq=seq
        )


@pytest.fixture(params=ENGINES)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    async with _backend(request) as made:
        yield made


@pytest.fixture(params=REDIS_ENGINES)
async def redis_backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """For the Redis engines' own tests (the key layout, the pub/sub connection): the memory
    engine has neither, so these are not contract tests and do not run on it."""
    async with _backend(request) as made:
        yield made


@contextlib.asynccontextmanager
async def _backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind: str = request.param
    prefix = f"test-{uuid.uuid4().hex}"
    clients: list[Redis] = []
    new_client: Callable[[], Redis] | None = None
    if kind == "fakeredis":
        server = fakeredis.FakeServer()

        def new_client() -> Redis:
            client: Redis = fakeredis.FakeAsyncRedis(server=server)
            clients.append(client)
            return client

    elif kind == "redis":
        url: str = request.getfixturevalue("redis_url")

        def new_client() -> Redis:
            client = Redis.from_url(url)
            clients.append(client)
            return client

    backend = Backend(
        kind=kind,
        prefix=prefix,
        client=new_client() if new_client else None,
        new_client=new_client,
    )
    try:
        yield backend
    finally:
        for engine in backend.engines:
            await engine.close()
        if backend.client is not None:
            # Remove only what this test wrote.
            keys = [k async for k in backend.client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await backend.client.delete(*keys)
        for client in clients:
            await client.aclose()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def settled(engine: Engine, recorder: Recorder) -> None:
    """Until the relay has delivered everything published before this call: a marker appended
    now, to a channel of its own, arrives after it (one ordered pub/sub connection on Redis; in
    order on the memory engine). How a test sees that nothing more (a duplicate) is coming."""
    marker = f"marker-{uuid.uuid4().hex}"
    await engine.create(marker)
    await engine.watch(marker)
    ids = (await engine.append(marker, msgs("marker"))).ids
    await until(lambda: recorder.ids(marker) == ids)


def _delivered(recorder: Recorder, channel_id: str, ids: list[str]) -> bool:
    return recorder.ids(channel_id) == ids


def msgs(*values: Any) -> list[tuple[EventType, bytes]]:
    return [("message", pack(v)) for v in values]


def key(event_id: str) -> tuple[int, int]:
    return parse_event_id(event_id)


# -- channel model --------------------------------------------------------------------------


async def test_create_info_and_exists(backend: Backend) -> None:
    engine, _ = await backend.engine()
    before = int(time.time() * 1000)
    info = await engine.create("a")
    assert info.id == "a" and info.state == "open" and info.messages == 0
    assert info.last_event_id is None
    assert before - 5 <= info.created_at <= int(time.time() * 1000) + 5
    with pytest.raises(ChannelExists):
        await engine.create("a")
    got = await engine.info("a")
    assert got is not None
    assert (got.state, got.messages, got.created_at) == ("open", 0, info.created_at)
    assert 3590 <= got.ttl <= 3600
    assert await engine.info("nope") is None
    assert await engine.exists_many(["a", "nope", "a"]) == [True, False, True]
    assert await engine.exists_many([]) == []


async def test_unknown_channel(backend: Backend) -> None:
    engine, _ = await backend.engine()
    with pytest.raises(ChannelNotFound):
        await engine.append("nope", msgs(1))
    with pytest.raises(ChannelNotFound):
        await engine.read("nope", None, 10)
    assert await engine.delete("nope") is False


async def test_append_ids_increase_and_read_back(backend: Backend) -> None:
    engine, _ = await backend.engine()
    await engine.create("c")
    ids: list[str] = []
    for n in range(5):
        result = await engine.append("c", msgs({"n": n}))
        assert not result.duplicate and len(result.ids) == 1
        assert result.last_event_id == result.ids[0]
        ids += result.ids
    batch = await engine.append("c", msgs("x", None, [1, 2]))
    assert len(batch.ids) == 3 and batch.last_event_id == batch.ids[-1]
    ids += batch.ids
    assert [key(i) for i in ids] == sorted({key(i) for i in ids}), "ids strictly increase"

    page = await engine.read("c", None, 100)
    assert [e.id for e in page.events] == ids
    assert [e.data for e in page.events] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
        {"n": 3},
        {"n": 4},
        "x",
        None,
        [1, 2],
    ]
    assert {e.type for e in page.events} == {"message"}
    assert (page.gap, page.ended, page.more, page.last_event_id) == (None, False, False, ids[-1])

    after = await engine.read("c", ids[4], 100)
    assert [e.id for e in after.events] == ids[5:]
    assert (await engine.read("c", ids[-1], 100)).events == []

    info = await engine.info("c")
    assert info is not None and info.messages == 8 and info.last_event_id == ids[-1]
    assert info.updated_at >= info.created_at


async def test_read_pagination(backend: Backend) -> None:
    engine, _ = await backend.engine()
    await engine.create("p")
    ids = (await engine.append("p", msgs(*range(7)))).ids
    seen: list[str] = []
    position = None
    pages = 0
    while True:
        page = await engine.read("p", position, 3)
        pages += 1
        seen += [e.id for e in page.events]
        assert page.last_event_id == ids[-1]
        if not page.more:
            break
        assert len(page.events) == 3
        position = page.events[-1].id
    assert seen == ids and pages == 3
    exact = await engine.read("p", ids[3], 3)
    assert [e.id for e in exact.events] == ids[4:] and exact.more is False


async def test_end_then_append_is_refused(backend: Backend) -> None:
    engine, _ = await backend.engine()
    await engine.create("e")
    await engine.append("e", msgs(1))
    end = await engine.append("e", [("end", pack({"final": True}))])
    with pytest.raises(ChannelEnded):
        await engine.append("e", msgs(2))
    with pytest.raises(ChannelEnded):
        await engine.append("e", [("end", pack(None))])
    page = await engine.read("e", None, 10)
    assert [e.type for e in page.events] == ["message", "end"]
    assert page.events[-1].data == {"final": True} and page.events[-1].terminal
    assert page.ended and page.last_event_id == end.last_event_id
    info = await engine.info("e")
    assert info is not None and info.state == "ended" and info.messages == 2


async def test_error_event_ends_channel(backend: Backend) -> None:
    engine, _ = await backend.engine()
    await engine.create("err")
    result = await engine.append("err", [*msgs(1), ("error", pack({"message": "boom"}))])
    assert len(result.ids) == 2
    with pytest.raises(ChannelEnded):
        await engine.append("err", msgs(2))
    page = await engine.read("err", result.ids[0], 10)
    assert [(e.type, e.data) for e in page.events] == [("error", {"message": "boom"})]
    assert page.ended


async def test_cancel(backend: Backend) -> None:
    """A reader's cancel ends the channel with `cancelled`; writers are told, on every door."""
    engine, recorder = await backend.engine(Limits(idle_ttl=100, retention=50))
    await engine.create("c")
    await engine.watch("c")
    first = await engine.append("c", msgs("token"), writer="w", seq=1)
    cancelled = await engine.cancel("c", "user pressed stop")
    assert not cancelled.duplicate and len(cancelled.ids) == 1
    assert cancelled.last_event_id == cancelled.ids[0]
    page = await engine.read("c", None, 10)
    assert [(e.type, e.data) for e in page.events] == [
        ("message", "token"),
        ("cancelled", {"reason": "user pressed stop"}),
    ]
    assert page.ended and page.events[-1].terminal
    await until(lambda: len(recorder.ids("c")) == 2)
    assert recorder.events["c"][-1].type == "cancelled"
    info = await engine.info("c")
    assert info is not None and info.state == "cancelled" and info.messages == 2
    assert 45 <= info.ttl <= 50, "kept for the retention, like an ended channel"

    for append in (engine.append, backend.outside_append):
        with pytest.raises(ChannelCancelled) as refused:
            await append("c", msgs("late"))
        assert isinstance(refused.value, ChannelEnded)
        with pytest.raises(ChannelCancelled):
            await append("c", [("end", pack(None))])
        # A retry of a write stored before the cancel still gets its original answer.
        retry = await append("c", msgs("token"), writer="w", seq=1)
        assert retry.duplicate and retry.last_event_id == first.last_event_id
    again = await engine.cancel("c")
    assert again.duplicate and again.ids == [] and again.last_event_id == cancelled.ids[0]
    assert len((await engine.read("c", None, 10)).events) == 2

    await engine.create("done")
    await engine.append("done", [("end", pack(None))])
    with pytest.raises(ChannelEnded) as ended:
        await engine.cancel("done")
    assert not isinstance(ended.value, ChannelCancelled)
    with pytest.raises(ChannelNotFound):
        await engine.cancel("missing")
    await engine.create("quiet")
    with pytest.raises(ValueError):
        await engine.cancel("quiet", "x" * 201)
    plain = await engine.cancel("quiet")  # no reason, no event before it
    page = await engine.read("quiet", None, 10)
    assert [(e.id, e.type, e.data) for e in page.events] == [
        (plain.ids[0], "cancelled", {"reason": None})
    ]


async def test_writer_lease(backend: Backend) -> None:
    """A channel whose writer neither writes nor heartbeats for writer_timeout is ended with
    the `writer_timeout` error by expire_writers(); writes and heartbeats renew the lease."""
    engine, recorder = await backend.engine()
    created = await engine.create("silent", writer_timeout=1)
    assert created.writer_timeout == 1
    for name in ("beating", "writing"):
        await engine.create(name, writer_timeout=1)
    await engine.create("unleased")  # writer_timeout=0: no lease
    await engine.watch("silent")
    names = ["silent", "beating", "writing", "unleased", "missing"]
    started = time.monotonic()
    assert await engine.expire_writers(names) == []
    expired: list[str] = []
    while time.monotonic() - started < 2.5:
        await engine.heartbeat("beating")
        await engine.append("writing", msgs("still here"))
        expired += await engine.expire_writers(names)
        await asyncio.sleep(0.2)
    assert expired == ["silent"], "only the silent writer's channel ends, once"
    info = await engine.info("silent")
    assert info is not None and info.state == "ended" and info.writer_timeout == 1
    page = await engine.read("silent", None, 10)
    assert [(e.type, e.data) for e in page.events] == [
        ("error", {"code": "writer_timeout", "message": "The backend wrote nothing for 1 s."})
    ]
    await until(lambda: recorder.ids("silent") == [page.events[0].id])
    with pytest.raises(ChannelEnded):
        await engine.append("silent", msgs("too late"))
    with pytest.raises(ChannelEnded):
        await engine.heartbeat("silent")
    for name in ("beating", "writing", "unleased"):
        alive = await engine.info(name)
        assert alive is not None and alive.state == "open", name

    # Once the beats stop, the lease runs out for that one too.
    async with asyncio.timeout(5):
        while not await engine.expire_writers(["beating"]):
            await asyncio.sleep(0.1)
    with pytest.raises(ChannelNotFound):
        await engine.heartbeat("missing")
    await engine.cancel("writing")
    with pytest.raises(ChannelCancelled):
        await engine.heartbeat("writing")


async def test_dedup_by_writer_and_seq(backend: Backend) -> None:
    engine, _ = await backend.engine()
    await engine.create("d")
    first = await engine.append("d", msgs("a"), writer="w", seq=1)
    assert not first.duplicate
    again = await engine.append("d", msgs("a"), writer="w", seq=1)
    assert again.duplicate and again.ids == [] and again.last_event_id == first.last_event_id

    batch = await engine.append("d", msgs("b", "c", "d"), writer="w", seq=2)  # seqs 2..4
    assert len(batch.ids) == 3
    for seq in (2, 3, 4):
        retry = await engine.append("d", msgs("b", "c", "d"), writer="w", seq=seq)
        assert retry.duplicate and retry.last_event_id == batch.last_event_id
    other = await engine.append("d", msgs("x"), writer="other", seq=1)  # writers are independent
    assert not other.duplicate
    no_writer = await engine.append("d", msgs("y"))
    assert not no_writer.duplicate

    end = await engine.append("d", [("end", pack(None))], writer="w", seq=5)
    # A writer retrying its final write after the channel ended gets its answer, not an error.
    retry_end = await engine.append("d", [("end", pack(None))], writer="w", seq=5)
    assert retry_end.duplicate and retry_end.last_event_id == end.last_event_id
    with pytest.raises(ChannelEnded):
        await engine.append("d", msgs("late"), writer="w", seq=6)
    page = await engine.read("d", None, 100)
    assert [e.data for e in page.events] == ["a", "b", "c", "d", "x", "y", None]


async def test_trimming_reports_gap(backend: Backend) -> None:
    engine, _ = await backend.engine(Limits(max_messages=3))
    await engine.create("t")
    ids = [(await engine.append("t", msgs(n))).ids[0] for n in range(5)]
    page = await engine.read("t", None, 10)
    assert [e.id for e in page.events] == ids[2:]
    assert page.gap == ids[2]
    assert (await engine.read("t", ids[0], 10)).gap == ids[2]
    newest_dropped = await engine.read("t", ids[1], 10)
    assert newest_dropped.gap is None and [e.id for e in newest_dropped.events] == ids[2:]
    assert (await engine.read("t", ids[2], 10)).gap is None
    assert (await engine.read("t", "0-1", 1)).gap == ids[2]
    info = await engine.info("t")
    assert info is not None and info.messages == 5

    # A batch longer than the limit keeps only its newest events.
    await engine.create("big")
    big = await engine.append("big", msgs(*range(5)))
    page = await engine.read("big", None, 10)
    assert [e.id for e in page.events] == big.ids[2:] and page.gap == big.ids[2]


async def test_idle_ttl_refreshed_by_writes(backend: Backend) -> None:
    engine, _ = await backend.engine(Limits(idle_ttl=2, retention=60))
    await engine.create("idle")
    await engine.create("busy")
    for _ in range(3):
        await asyncio.sleep(0.8)
        await engine.append("busy", msgs(1))
    # 2.4 s after creation: "idle" expired, "busy" was kept alive by its writes.
    assert await engine.info("idle") is None
    assert await engine.exists_many(["idle", "busy"]) == [False, True]
    with pytest.raises(ChannelNotFound):
        await engine.append("idle", msgs(1))
    with pytest.raises(ChannelNotFound):
        await engine.read("idle", None, 1)
    assert [c.id for c in await engine.channels()] == ["busy"]


async def test_retention_after_end(backend: Backend) -> None:
    engine, _ = await backend.engine(Limits(idle_ttl=1, retention=3))
    await engine.create("kept")
    await engine.append("kept", [*msgs(1), ("end", pack(None))])
    info = await engine.info("kept")
    assert info is not None and 2 <= info.ttl <= 3
    await asyncio.sleep(1.3)  # past idle_ttl: the ended channel is kept for its retention
    page = await engine.read("kept", None, 10)
    assert len(page.events) == 2 and page.ended

    short = await backend.engine(Limits(idle_ttl=60, retention=1))
    await short[0].create("short")
    await short[0].append("short", [("error", pack("x"))])
    await asyncio.sleep(1.3)
    assert await short[0].info("short") is None


async def test_delete_and_recreate(backend: Backend) -> None:
    engine, _ = await backend.engine()
    await engine.create("x")
    old = await engine.append("x", msgs(1, 2), writer="w", seq=1)
    assert await engine.delete("x") is True
    assert await engine.info("x") is None
    assert await engine.delete("x") is False
    with pytest.raises(ChannelNotFound):
        await engine.read("x", None, 10)
    await engine.create("x")
    page = await engine.read("x", None, 10)
    assert page.events == [] and page.last_event_id is None and page.gap is None
    fresh = await engine.append("x", msgs(3), writer="w", seq=1)  # the writer table is gone too
    assert not fresh.duplicate and fresh.ids != old.ids


async def test_channels_listing(backend: Backend) -> None:
    engine, _ = await backend.engine()
    for name in ("one", "two", "three"):
        await engine.create(name)
        await asyncio.sleep(0.005)  # distinct created_at
    await engine.append("two", [("end", pack(None))])
    listed = await engine.channels()
    assert [c.id for c in listed] == ["three", "two", "one"]
    assert [c.state for c in listed] == ["open", "ended", "open"]
    assert [c.id for c in await engine.channels(limit=2)] == ["three", "two"]
    await engine.delete("three")
    assert [c.id for c in await engine.channels(limit=2)] == ["two", "one"]


# -- live delivery --------------------------------------------------------------------------


async def test_watch_delivers_in_order_until_unwatch(backend: Backend) -> None:
    engine, recorder = await backend.engine()
    await engine.create("w")
    await engine.create("other")
    await engine.watch("w")
    ids: list[str] = []
    for n in range(20):
        ids += (await engine.append("w", msgs(n))).ids
    ids += (await engine.append("w", msgs("a", "b", "c"))).ids
    await engine.append("other", msgs("not watched"))
    await until(lambda: len(recorder.ids("w")) >= len(ids))
    assert recorder.ids("w") == ids
    assert [e.data for e in recorder.events["w"]] == [*range(20), "a", "b", "c"]
    assert "other" not in recorder.events

    await engine.unwatch("w")
    await engine.append("w", msgs("after"))
    await engine.watch("other")
    marker = (await engine.append("other", msgs("marker"))).ids
    # "other" is delivered on the same path, so once its marker arrived, anything of "w" would
    # have too.
    await until(lambda: recorder.ids("other") == marker)
    assert recorder.ids("w") == ids


async def test_batch_append_is_delivered_in_few_calls(backend: Backend) -> None:
    """A batch append publishes one message per entry; the relay hands them over together."""
    engine, recorder = await backend.engine()
    await engine.create("burst")
    await engine.watch("burst")
    ids = (await engine.append("burst", msgs(*range(50)))).ids
    await until(lambda: len(recorder.ids("burst")) == 50)
    assert recorder.ids("burst") == ids
    assert recorder.calls < 50, "buffered pub/sub messages are delivered as one batch"


async def test_newlines_and_large_values_survive_the_relay(backend: Backend) -> None:
    """Live messages are split on their first two newlines only; the data may hold any bytes."""
    engine, recorder = await backend.engine()
    await engine.create("nl")
    await engine.watch("nl")
    values: list[Any] = ["a\nb\n\nc", "\n", {"k\n": ["\n\n", 1.5, None]}, "x" * 300_000]
    result = await engine.append("nl", msgs(*values))
    await until(lambda: len(recorder.ids("nl")) == len(values))
    assert recorder.ids("nl") == result.ids
    assert [e.data for e in recorder.events["nl"]] == values
    assert [e.data for e in (await engine.read("nl", None, 10)).events] == values


async def test_concurrent_writers(backend: Backend) -> None:
    engine, recorder = await backend.engine()
    await engine.create("many")
    await engine.watch("many")

    async def write(writer: int) -> list[str]:
        ids: list[str] = []
        for seq in range(1, 11):
            result = await engine.append("many", msgs([writer, seq]), writer=f"w{writer}", seq=seq)
            assert not result.duplicate
            ids += result.ids
        return ids

    per_writer = await asyncio.gather(*(write(n) for n in range(20)))
    page = await engine.read("many", None, 1000)
    assert len(page.events) == 200
    assert [e.key for e in page.events] == sorted(e.key for e in page.events)
    assert sorted(e.id for e in page.events) == sorted(i for ids in per_writer for i in ids)
    for n, ids in enumerate(per_writer):  # each writer's events are in its own order
        mine = [e for e in page.events if e.data[0] == n]
        assert [e.id for e in mine] == ids and [e.data[1] for e in mine] == list(range(1, 11))
    await until(lambda: len(recorder.ids("many")) == 200)
    assert recorder.ids("many") == [e.id for e in page.events]
    info = await engine.info("many")
    assert info is not None and info.messages == 200


async def test_watch_delivers_terminal_event(backend: Backend) -> None:
    engine, recorder = await backend.engine()
    await engine.create("fin")
    await engine.watch("fin")
    end = await engine.append("fin", [*msgs(1), ("end", pack({"done": 1}))])
    await until(lambda: len(recorder.ids("fin")) == 2)
    assert recorder.ids("fin") == end.ids
    last = recorder.events["fin"][-1]
    assert last.type == "end" and last.terminal and last.data == {"done": 1}


async def test_delete_notifies_watcher(backend: Backend) -> None:
    engine, recorder = await backend.engine()
    await engine.create("gone")
    await engine.watch("gone")
    await engine.delete("gone")
    await until(lambda: recorder.gone == ["gone"])
    await settled(engine, recorder)
    assert recorder.gone == ["gone"], "told once, although the deletion is also published"
    # Still watched (the hub unwatches when its subscribers leave): a channel created again under
    # that name is delivered, and its deletion told again.
    await engine.create("gone")
    ids = (await engine.append("gone", msgs("again"))).ids
    await until(lambda: recorder.ids("gone") == ids)
    await engine.delete("gone")
    await until(lambda: recorder.gone == ["gone", "gone"])
    await settled(engine, recorder)
    assert recorder.gone == ["gone", "gone"]


# -- several writers and brokers on one storage ------------------------------------------


async def test_invalid_batch_is_refused(backend: Backend) -> None:
    """A bad batch stores nothing and leaves the channel as it was, on every engine."""
    engine, recorder = await backend.engine()
    await engine.create("v")
    await engine.watch("v")
    bad: list[tuple[list[tuple[EventType, bytes]], dict[str, Any]]] = [
        ([("end", pack(None)), *msgs(1)], {}),  # something after the terminal event
        ([("error", pack(None)), ("end", pack(None))], {}),
        ([], {}),
        ([("cancelled", pack(None))], {}),  # only cancel() appends that one
        ([("bogus", pack(None))], {}),  # type: ignore[list-item]
        ([("message", "not bytes")], {}),  # type: ignore[list-item]
        (msgs(1), {"writer": "w", "seq": 0}),
        (msgs(1), {"writer": "w", "seq": -3}),
        (msgs(1), {"writer": "w", "seq": True}),
        (msgs(1), {"writer": "w"}),
        (msgs(1), {"seq": 1}),
        (msgs(1), {"writer": "", "seq": 1}),
    ]
    for items, extra in bad:
        with pytest.raises(ValueError):
            await engine.append("v", items, **extra)
        with pytest.raises(ValueError):
            await backend.outside_append("v", items, **extra)
    info = await engine.info("v")
    assert info is not None and info.state == "open" and info.messages == 0
    assert (await engine.read("v", None, 10)).events == []
    # The channel is still open, and seq 1 of writer "w" was never taken.
    first = await engine.append("v", msgs("ok"), writer="w", seq=1)
    assert not first.duplicate and len(first.ids) == 1
    await until(lambda: recorder.ids("v") == first.ids)


async def test_outside_writer_is_relayed(backend: Backend) -> None:
    """A writer outside the broker (the worker library writing straight into Redis) appends;
    the broker's watcher relays it."""
    engine, recorder = await backend.engine()
    await engine.create("job")
    await engine.watch("job")
    ids: list[str] = []
    for n in range(1, 4):
        result = await backend.outside_append("job", msgs(n), writer="wk", seq=n)
        ids += result.ids
    retry = await backend.outside_append("job", msgs(3), writer="wk", seq=3)
    assert retry.duplicate and retry.last_event_id == ids[-1]
    ids += (await backend.outside_append("job", [("end", pack("ok"))], writer="wk", seq=4)).ids
    with pytest.raises(ChannelEnded):
        await backend.outside_append("job", msgs(5))
    with pytest.raises(ChannelNotFound):
        await backend.outside_append("missing", msgs(5))
    await until(lambda: len(recorder.ids("job")) == 4)
    assert recorder.ids("job") == ids
    assert [e.data for e in recorder.events["job"]] == [1, 2, 3, "ok"]


async def test_two_broker_processes(backend: Backend) -> None:
    """Both relay the same writes; a deletion on one disconnects the other's watchers."""
    first, first_seen = await backend.engine()
    second, second_seen = await backend.engine()
    await first.create("shared")
    await first.watch("shared")
    await second.watch("shared")
    ids = (await first.append("shared", msgs(1, 2))).ids
    ids += (await second.append("shared", msgs(3))).ids
    await until(lambda: len(first_seen.ids("shared")) == 3 == len(second_seen.ids("shared")))
    assert first_seen.ids("shared") == ids == second_seen.ids("shared")
    assert [c.id for c in await second.channels()] == ["shared"]
    assert await second.delete("shared") is True
    await until(lambda: first_seen.gone == ["shared"] and second_seen.gone == ["shared"])
    assert await first.exists_many(["shared"]) == [False]


async def test_watch_before_create(backend: Backend) -> None:
    engine, recorder = await backend.engine()
    await engine.watch("later")
    await engine.create("later")
    ids = (await engine.append("later", msgs(1))).ids
    await until(lambda: recorder.ids("later") == ids)
    # Watched while it did not exist yet: not reported gone, and the event arrives once.
    assert recorder.gone == []
    assert [e.data for e in recorder.events["later"]] == [1]


# -- the Redis engine's own: its key layout and its pub/sub connection ------------------------


async def test_key_layout(redis_backend: Backend) -> None:
    backend = redis_backend
    assert backend.client is not None
    engine, _ = await backend.engine(Limits(idle_ttl=100, retention=200, max_messages=2))
    await engine.create("lay")
    result = await engine.append("lay", msgs(1, 2, 3), writer="w1", seq=4)
    client: Any = backend.client  # raw replies: bytes, whatever redis-py's stubs allow
    p = backend.prefix
    keys = redis_layout.channel_keys(p, "lay")
    assert (keys.events, keys.meta, keys.writers, keys.live) == (
        f"{p}:{{lay}}:events",
        f"{p}:{{lay}}:meta",
        f"{p}:{{lay}}:writers",
        f"{p}:{{lay}}:live",
    )
    meta = {k.decode(): v.decode() for k, v in (await client.hgetall(keys.meta)).items()}
    assert meta["state"] == "open" and meta["count"] == "3"
    assert (meta["idle_ttl"], meta["retention"], meta["max_messages"]) == ("100", "200", "2")
    assert meta["last_id"] == result.ids[-1] and meta["dropped_until"] == result.ids[0]
    assert int(meta["updated_at"]) >= int(meta["created_at"])
    assert await client.hget(keys.writers, "w1") == f"6 {result.ids[-1]}".encode()
    entries = await client.xrange(keys.events)
    assert [(i.decode(), f[b"type"], unpack(f[b"data"])) for i, f in entries] == [
        (result.ids[1], b"message", 2),
        (result.ids[2], b"message", 3),
    ]
    for name in keys.stored:
        assert 99_000 < await client.pttl(name) <= 100_000
    assert await client.zscore(redis_layout.index_key(p, "lay"), "lay") == float(meta["created_at"])
    await engine.append("lay", [("end", pack(None))])
    for name in keys.stored:
        assert 199_000 < await client.pttl(name) <= 200_000


def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


def _reconnected(engine: RedisEngine, times: int) -> bool:
    return engine.feed.reconnects >= times


async def _drop_pubsub(backend: Backend, engine: RedisEngine) -> None:
    if backend.kind == "redis":
        client: Any = backend.client
        killed = await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
    else:
        # fakeredis has no CLIENT KILL: close the relay's connection under it instead. That does
        # not wake a pending read on fakeredis, so the relay notices on its next health check
        # (shortened by the test), as it would a half-open TCP connection.
        conn = next(iter(engine.feed._links.values())).conn
        assert conn is not None
        await conn.disconnect()


async def test_pubsub_reconnect_catches_up(
    redis_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events appended while the relay's pub/sub connection is down arrive once, in order."""
    backend = redis_backend
    # A long first retry delay makes sure the appends below happen while disconnected.
    monkeypatch.setattr(live_feed_module, "RECONNECT_MIN", 0.5)
    monkeypatch.setattr(live_feed_module, "HEALTH_INTERVAL", 0.2)
    engine, recorder = await backend.engine()
    assert isinstance(engine, RedisEngine)
    assert backend.client is not None
    for name in ("r1", "r2"):
        await engine.create(name)
        await engine.watch(name)
    await engine.create("r3")
    ids = {name: (await engine.append(name, msgs("before"))).ids for name in ("r1", "r2")}
    await until(lambda: recorder.ids("r1") == ids["r1"] and recorder.ids("r2") == ids["r2"])

    await _drop_pubsub(backend, engine)
    await until(lambda: engine.feed.reconnects == 1)
    for n in range(10):
        ids["r1"] += (await engine.append("r1", msgs(n))).ids
    ids["r1"] += (await engine.append("r1", [("end", pack(None))])).ids
    # Deleted by another process while we were not listening: its notice is lost, the
    # catch-up must notice the channel is gone.
    await engine.append("r2", msgs("lost with the channel"))
    assert await redis_layout.delete_channel(backend.client, backend.prefix, "r2")
    # Watched while disconnected: returns once subscribed on the new connection.
    await engine.watch("r3")
    r3 = (await engine.append("r3", msgs("live again"))).ids
    await until(lambda: recorder.ids("r3") == r3)
    await until(lambda: recorder.ids("r1") == ids["r1"])
    assert recorder.gone == ["r2"]
    assert recorder.ids("r2") == ids["r2"]
    assert engine.feed.caught_up == 11, "what was appended while disconnected came from the stream"
    # And live delivery works on the new connection.
    r3 += (await engine.append("r3", msgs("more"))).ids
    await until(lambda: recorder.ids("r3") == r3)
    assert engine.feed.reconnects == 1


async def test_one_pubsub_connection_for_all_channels(redis_url: str) -> None:
    """The relay's cost does not grow with watched channels: one connection, one task.
    (A real Redis only: it counts server-side connections, which fakeredis cannot list.)"""
    client: Any = Redis.from_url(redis_url)

    async def pubsub_connections() -> int:
        return len(_lines(await client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")))

    before = await pubsub_connections()
    engine = RedisEngine(
        Limits(), prefix=f"test-{uuid.uuid4().hex}", client=Redis.from_url(redis_url)
    )
    recorder = Recorder()
    await engine.start(recorder)
    try:
        names = [f"many-{n}" for n in range(50)]
        for name in names:
            await engine.create(name)
        await asyncio.gather(*(engine.watch(name) for name in names))
        assert await pubsub_connections() == before + 1
        assert engine.stats()["feed_connections"] == 1
        feed_tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("redis-live-feed")]
        assert len(feed_tasks) == 1
        for name in names:
            await engine.append(name, msgs(name))
        await until(lambda: all(len(recorder.ids(name)) == 1 for name in names))
        # Each channel got its own event, and delivering them opened nothing more.
        assert all([e.data for e in recorder.events[n]] == [n] for n in names)
        assert await pubsub_connections() == before + 1
    finally:
        await engine.close()
        await engine.redis.aclose()
        await client.aclose()


def _lines(listing: Any) -> list[str]:
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return [line for line in text.splitlines() if line]


async def test_rewatch_after_unwatch(backend: Backend) -> None:
    """Quick unwatch/watch cycles (the hub's last subscriber leaving, a new one arriving)."""
    engine, recorder = await backend.engine()
    await engine.create("cycle")
    expected: list[str] = []
    for n in range(5):
        await engine.watch("cycle")
        expected += (await engine.append("cycle", msgs(n))).ids
        await until(functools.partial(_delivered, recorder, "cycle", list(expected)))
        await engine.unwatch("cycle")
        await engine.append("cycle", msgs("unwatched"))
    await engine.watch("cycle")
    expected += (await engine.append("cycle", msgs("last"))).ids
    await until(lambda: recorder.ids("cycle") == expected)
    assert recorder.gone == []


async def test_watch_guarantee_under_concurrent_writes(backend: Backend) -> None:
    """Everything appended after watch() returned is delivered, while a writer keeps going."""
    engine, recorder = await backend.engine()
    await engine.create("busy")
    stop = asyncio.Event()
    written: list[str] = []

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            written.extend((await engine.append("busy", msgs(n))).ids)
            n += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    await until(lambda: len(written) >= 20)
    await engine.watch("busy")
    boundary = len(written)  # every id from here on was appended after watch() returned
    await until(lambda: len(written) >= boundary + 50)
    stop.set()
    await task
    after = written[boundary:]
    await until(lambda: bool(recorder.ids("busy")) and recorder.ids("busy")[-1] == written[-1])
    delivered = recorder.ids("busy")
    assert delivered == sorted(set(delivered), key=key), "in order, no duplicate"
    assert delivered[-len(after) :] == after
    # Whatever came before the boundary is a contiguous run of the stream (no holes).
    start = written.index(delivered[0])
    assert delivered == written[start:]


async def test_relay_survives_drops_under_load(
    redis_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drop the pub/sub connection twice while a writer appends: no loss, no duplicate."""
    backend = redis_backend
    monkeypatch.setattr(live_feed_module, "HEALTH_INTERVAL", 0.2)
    engine, recorder = await backend.engine()
    assert isinstance(engine, RedisEngine)
    worker = backend.new_client() if backend.new_client else None
    assert worker is not None
    await engine.create("load")
    await engine.watch("load")
    written: list[str] = []

    async def write(count: int) -> None:
        for n in range(count):
            result = await redis_layout.append_events(
                worker, backend.prefix, "load", msgs(n), writer="wk", seq=len(written) + 1
            )
            written.extend(result.ids)
            await asyncio.sleep(0.002)

    for drop in (1, 2):
        task = asyncio.create_task(write(100))
        await until(functools.partial(_at_least, written, len(written) + 10))  # mid-stream
        await _drop_pubsub(backend, engine)
        await task
        await until(functools.partial(_reconnected, engine, drop))
    await write(5)
    await until(lambda: len(recorder.ids("load")) >= len(written))
    await settled(engine, recorder)
    assert recorder.ids("load") == written
    assert engine.feed.caught_up > 0, "some events were appended while disconnected"


async def test_engine_from_url_absorbs_bursts(redis_url: str) -> None:
    """The engine's own pool waits for a free connection rather than failing a burst."""
    prefix = f"test-{uuid.uuid4().hex}"
    engine = RedisEngine(Limits(), redis_url, prefix=prefix, max_connections=8)
    recorder = Recorder()
    await engine.start(recorder)
    try:
        names = [f"burst-{n}" for n in range(150)]
        await asyncio.gather(*(engine.create(name) for name in names))
        await asyncio.gather(*(engine.watch(name) for name in names))
        results = await asyncio.gather(*(engine.append(name, msgs(name)) for name in names))
        expected = {name: result.ids for name, result in zip(names, results, strict=True)}
        await until(lambda: {name: recorder.ids(name) for name in names} == expected)
        assert len(await engine.channels()) == 150
        for name in names:
            await engine.delete(name)
    finally:
        await engine.close()
    with pytest.raises(ValueError, match="decode_responses"):
        RedisEngine(Limits(), f"{redis_url}?decode_responses=True")


async def test_a_reader_cancelled_mid_subscribe_leaves_the_feed_consistent(
    redis_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that goes away while its SUBSCRIBE is being sent (the request handler is
    cancelled) must not leave the pub/sub connection's confirmation queue out of step with what
    was sent: that would attribute the next channel's confirmation to the abandoned one and hang
    or starve the next reader, on any channel."""
    backend = redis_backend
    engine, recorder = await backend.engine()
    assert isinstance(engine, RedisEngine)
    for name in ("first", "abandoned", "next"):
        await engine.create(name)
    await engine.watch("first")  # the feed's connection exists and is subscribed
    link = next(iter(engine.feed._links.values()))
    conn: Any = link.conn
    assert conn is not None
    real_send = conn.send_command
    gate = asyncio.Event()
    sending = asyncio.Event()

    async def slow_send(*args: Any, **kwargs: Any) -> None:
        sending.set()
        await gate.wait()  # the socket is slow to take the command
        await real_send(*args, **kwargs)

    monkeypatch.setattr(conn, "send_command", slow_send)
    abandoned = asyncio.create_task(engine.watch("abandoned"))
    await asyncio.wait_for(sending.wait(), 5)
    abandoned.cancel()  # the reader disconnected
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned
    gate.set()
    monkeypatch.setattr(conn, "send_command", real_send)

    await asyncio.wait_for(engine.watch("next"), 5)
    ids = (await backend.outside_append("next", msgs("after"))).ids
    await until(lambda: recorder.ids("next") == ids)
