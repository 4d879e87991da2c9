"""Request-path ids: 128 random bits as 32 hex digits, unique, and different in a forked child."""

from __future__ import annotations

import os
import re

from flywheel.ids import random_hex128


def test_ids_are_32_hex_digits_and_unique() -> None:
    ids = [random_hex128() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and leave at once
        os.write(write, random_hex128().encode())
        os._exit(0)
    os.close(write)
    parent_next = random_hex128()
    child_next = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(child_next) == 32
    assert child_next != parent_next
