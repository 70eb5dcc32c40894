"""Request ids (aibaas/gateway/middleware.py): unique per request, in every process."""

import os
import re

from aibaas.gateway.middleware import new_request_id, request_ids


def test_new_ids_are_32_hex_characters_and_never_repeat():
    ids = [new_request_id() for _ in range(50_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_process_does_not_repeat_its_parents_ids():
    """gunicorn --preload forks workers from a process that already made ids."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(new_request_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent
    assert {value[:16] for value in child}.isdisjoint({value[:16] for value in parent})


def test_a_client_id_is_echoed_and_the_usage_id_stays_unique():
    sent = {"x-request-id": "my-trace.1"}
    first, second = request_ids(sent), request_ids(sent)
    assert first[0] == second[0] == "my-trace.1"
    assert first[1] != second[1] and first[1].startswith("my-trace.1:")
