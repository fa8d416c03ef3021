"""Redis stream entry ids ("<ms>-<seq>"), as every reader and writer of the project's streams handles them.

Contract: `entry_id` turns a reply's id (bytes or str) into str; `id_key` orders ids; `ms_of` is an id's
millisecond time; `after` is the smallest id after one (XTRIM MINID of it removes that id and all before).
"""

from __future__ import annotations


def entry_id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def id_key(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def ms_of(raw: bytes | str) -> int:
    return id_key(entry_id(raw))[0]


def after(value: str) -> str:
    ms, seq = id_key(value)
    return f"{ms}-{seq + 1}"
