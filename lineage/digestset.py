"""Sets of object digests in bounded memory: 40 bytes a digest, not the ~180 of a str in a Python set.

verify and gc ask "is this object referenced?" for every object in the store, and a million-image
version references a million objects. As Python strs in a set that costs several hundred MB; packed
here as 32 raw bytes each (plus an 8-byte sort key) it costs 40 MB, and membership is vectorised.

A digest is packed from its 64 lowercase hex characters to 32 bytes. Membership sorts the set by its
first 8 bytes as a big-endian integer (numpy sorts and searches integers fast; fixed-width byte strings
it compares slowly), then compares all 32 bytes of the candidate. Big-endian, so key order is the
digests' own byte order: digests already ascending (a pack's index) are a set as they are
(`DigestSet.ascending`), neither copied nor sorted. Digests here come from untrusted
files (names in objects/, rows objects), so two members may share those 8 bytes: such a query is
resolved by comparing every member with that key, which is rare and always correct.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

DIGEST_BYTES = 32
QUERY_CHUNK = 1 << 16
_NOT_HEX = 255
_NIBBLES = np.full(256, _NOT_HEX, dtype=np.uint8)
for _value, _char in enumerate(b"0123456789abcdef"):
    _NIBBLES[_char] = _value


def pack_hex(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 64) ASCII bytes → ((n, 32) packed digests, which rows were 64 lowercase hex characters)."""
    nibbles = _NIBBLES[chars.reshape(-1, 2 * DIGEST_BYTES)]
    valid = ~(nibbles == _NOT_HEX).any(axis=1)
    packed = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return np.ascontiguousarray(packed, dtype=np.uint8), valid


def pack_strings(digests: Iterable[str]) -> np.ndarray:
    """Checked digests (64 lowercase hex characters each) as an (n, 32) array; ValueError otherwise."""
    digests = list(digests)
    if not digests:
        return empty()
    if any(len(d) != 2 * DIGEST_BYTES for d in digests):
        raise ValueError("a digest is not 64 characters long")
    return _checked(np.frombuffer("".join(digests).encode("ascii", "replace"), dtype=np.uint8))


def drain(parts: list[np.ndarray]) -> Iterator[np.ndarray]:
    """The list's items, each removed from it as it is handed over."""
    while parts:
        yield parts.pop()


def unpack(packed: np.ndarray) -> str:
    """One packed digest back to its 64 hex characters."""
    return bytes(packed).hex()


def empty() -> np.ndarray:
    return np.empty((0, DIGEST_BYTES), dtype=np.uint8)


def _checked(chars: np.ndarray) -> np.ndarray:
    packed, valid = pack_hex(chars)
    if not valid.all():
        raise ValueError("a digest holds characters other than lowercase hex")
    return packed


def _keys(packed: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each digest as one big-endian integer: the sort key, ascending with the digests."""
    return np.ascontiguousarray(packed[:, :8]).view(">u8").ravel().astype(np.uint64)


def _as_strings(packed: np.ndarray) -> np.ndarray:
    """(n, 32) digests as n 32-byte strings (a view where the rows are contiguous)."""
    return np.ascontiguousarray(packed).view(f"S{DIGEST_BYTES}").ravel()


class DigestSet:
    """Packed digests with vectorised membership (see the module docstring)."""

    def __init__(self, parts: Iterable[np.ndarray] = ()):
        """From packed parts; a caller that passes them as a consuming iterator (`drain`) lets each go as soon
        as it is copied, so a million digests are held twice at most while the set is built, not three times."""
        parts = [p for p in parts if len(p)]
        members = np.concatenate(parts) if parts else empty()
        del parts
        order = np.argsort(_keys(members), kind="stable")
        self._members = members[order]
        self._keys = _keys(self._members)

    @classmethod
    def ascending(cls, packed: np.ndarray) -> "DigestSet":
        """The set of these (n, 32) digests, already in ascending byte order (a checked pack index's): held as
        they are, a view, with only their 8-byte keys made (8 bytes a digest)."""
        digests = cls.__new__(cls)
        digests._members, digests._keys = packed, _keys(packed)
        return digests

    def __len__(self) -> int:
        return len(self._members)

    @property
    def members(self) -> np.ndarray:
        """Every member, packed (n, 32), in key order."""
        return self._members

    def contains(self, packed: np.ndarray) -> np.ndarray:
        """For each (n, 32) query row, whether it is a member."""
        return self.locate(packed) >= 0

    def locate(self, packed: np.ndarray) -> np.ndarray:
        """For each (n, 32) query row, the index in `members` of a member equal to it, or -1. Queries go a
        chunk at a time: the temporary arrays of a million at once would cost more than the set itself."""
        found = np.full(len(packed), -1, dtype=np.int64)
        if len(self._members):
            for start in range(0, len(packed), QUERY_CHUNK):
                found[start:start + QUERY_CHUNK] = self._locate(packed[start:start + QUERY_CHUNK])
        return found

    def _locate(self, packed: np.ndarray) -> np.ndarray:
        # Whole digests compare as 32-byte strings: one comparison each, not 32 and a reduction.
        members, queries = _as_strings(self._members), _as_strings(packed)
        keys = _keys(packed)
        start = np.searchsorted(self._keys, keys, side="left")
        first = np.minimum(start, len(self._members) - 1)
        found = np.where(members[first] == queries, first, -1)
        # Members sharing a key (hostile names only): the exact one may follow the first. Rare, and exact.
        shared = (found < 0) & (first + 1 < len(self._keys))
        shared[shared] &= self._keys[first[shared] + 1] == keys[shared]
        for row in np.flatnonzero(shared):
            stop = np.searchsorted(self._keys, keys[row], side="right")
            equal = np.flatnonzero(members[start[row]:stop] == queries[row])
            if len(equal):
                found[row] = start[row] + equal[0]
        return found

    def __contains__(self, digest: str) -> bool:
        try:
            return bool(self.contains(pack_strings([digest]))[0])
        except ValueError:
            return False
