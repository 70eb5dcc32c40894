"""infra/redis_clients.py: commands packed by hiredis exactly as redis-py packs them, and the
per-loop pipeliner (what is issued together goes in one round trip, errors stay per command)."""

import asyncio

import pytest
import redis
from redis.asyncio.connection import Connection

from infra import redis_clients
from tests.servers import free_port


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "a" * 40, 2, "rl:{k}:rpm", "rl:{k}:rpd", "1,2,-3,4"),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETNAME", b"x"),
        ("SET", "clé", "värde ✓", "PX", 120000, "NX"),
        ("INCRBY", b"counter", -17),
        ("XADD", "aibaas:{usage}:events", "MAXLEN", "~", 1000, "*", "e", '{"a": 1}'),
    ],
)
def test_hiredis_packs_commands_as_redis_py_does(command):
    packed = redis_clients._packed(Connection)()
    assert b"".join(packed.pack_command(*command)) == b"".join(Connection().pack_command(*command))


def test_a_value_redis_cannot_take_is_a_data_error():
    with pytest.raises(redis.DataError):
        redis_clients._packed(Connection)().pack_command("SET", "k", object())


@pytest.mark.redis
def test_commands_issued_together_share_one_pipeline_and_keep_their_own_errors(settings):
    from redis.asyncio.connection import Connection as AsyncConnection

    sends: list[int] = []
    real = AsyncConnection.send_packed_command

    async def counted(self, command, check_health=True):
        sends.append(1)
        return await real(self, command, check_health)

    async def scenario():
        await redis_clients.apipelined("ping")  # the connection is open (its handshake sent)
        AsyncConnection.send_packed_command = counted
        try:
            key = "tests:pipeliner"
            first = redis_clients.submit("set", key, "v")
            second = redis_clients.submit("incr", key)  # WRONGTYPE-like: not an integer
            third = redis_clients.submit("get", key)
            results = await asyncio.gather(first, second, third, return_exceptions=True)
            await redis_clients.apipelined("delete", key)
            return results
        finally:
            AsyncConnection.send_packed_command = real

    results = asyncio.run(scenario())
    assert results[0] is True
    assert isinstance(results[1], redis.ResponseError)
    assert results[2] == b"v"
    assert len(sends) == 2  # the three together, then the delete


def test_an_unreachable_redis_fails_every_command_of_the_pipeline(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    async def scenario():
        futures = [redis_clients.submit("get", "a"), redis_clients.submit("get", "b")]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, (redis.ConnectionError, OSError)) for r in results)
