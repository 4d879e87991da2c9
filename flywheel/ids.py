"""Random ids for the request path without a system call.

``uuid.uuid4()`` reads ``os.urandom`` each time, and that call releases the GIL: with the interaction
recorder and kafka-python's sender threads busy, the event loop then waits to get it back (uuid4 was
~7-8 % of the gateway's event-loop samples under load, py-spy, both times it crept onto the hot path).
These ids need uniqueness, not secrecy: nothing is protected by guessing one (rating a response needs
its signed feedback token; event ids only dedupe), so a Mersenne Twister seeded once from the OS with
256 bits, and reseeded in a forked child, gives 128-bit ids at ~0.1 µs.
"""

from __future__ import annotations

import os
import random

_source = random.Random()


def _reseed() -> None:
    _source.seed(os.urandom(32))


_reseed()
os.register_at_fork(after_in_child=_reseed)


def random_hex128() -> str:
    """32 hex digits (128 random bits), like ``uuid.uuid4().hex`` without the system call."""
    return f"{_source.getrandbits(128):032x}"
