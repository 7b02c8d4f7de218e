"""(Near-)duplicate groups: LSH bands of the perceptual hash, thumbnail similarity, connected components.

Near duplicates need two checks: their perceptual hashes within ``distance`` bits (found by LSH
bands) *and* their 16x16 grey thumbnails correlated at ``similarity`` or more. The hash alone
joins different faces of one layout (the demo's smooth synthetic faces, 55 false groups of 70
at distance 6 in docs/benchmarks.md section 7); the thumbnails tell them apart.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from pipelines.quality.measures import HASH_BITS
from pipelines.records import UNLABELLED_SPLIT


def similarity(a: bytes, b: bytes) -> float:
    """Pearson correlation of two thumbnails, in [-1, 1]: blind to brightness and contrast
    changes (a brightened copy stays 1.0), near 1 for re-encoded or slightly cropped copies.
    Two flat thumbnails are alike (1.0); a flat one and another are not (0.0)."""
    x = np.frombuffer(a, np.uint8).astype(np.float64)
    y = np.frombuffer(b, np.uint8).astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    norms = math.sqrt(float(x @ x) * float(y @ y))
    if norms == 0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(x @ y) / norms


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class Member(NamedTuple):
    """An image as the duplicate groups see it (its thumbnail waits in the stash, see :class:`AuditQuality`)."""

    id: str
    split: str
    content_hash: int
    phash: int


def bands(phash: int, distance: int) -> list[tuple[int, int]]:
    """(band index, band value) of ``phash`` split into ``distance + 1`` bands of ~64/(k+1) bits.

    Pigeonhole: two hashes that differ in at most ``distance`` bits agree on at least one band,
    so grouping by every band finds every such pair (and some farther ones, checked after).
    """
    count = distance + 1
    edges = [round(i * HASH_BITS / count) for i in range(count + 1)]
    return [(i, (phash >> lo) & ((1 << (hi - lo)) - 1)) for i, (lo, hi) in enumerate(itertools.pairwise(edges))]


# A bucket entry: the hash (HASH_BITS) and the id's length in bytes, then the id.
_ENTRY_HEAD = struct.Struct(">QI")


def bucket_entry(image_id: str, phash: int) -> bytes:
    """An image as an LSH bucket holds it: its hash and id in a few bytes; a bucket's entries are
    concatenated (:func:`bucket_pairs`)."""
    encoded = image_id.encode("utf-8")
    return _ENTRY_HEAD.pack(phash, len(encoded)) + encoded


def bucket_pairs(entries: bytes, distance: int) -> Iterator[tuple[str, str]]:
    """(id, id) pairs (lower id first) of one LSH bucket's concatenated :func:`bucket_entry`
    members (an image may be there more than once) whose hashes are within ``distance`` bits."""
    members, start = set(), 0
    while start < len(entries):
        phash, length = _ENTRY_HEAD.unpack_from(entries, start)
        start += _ENTRY_HEAD.size + length
        if start > len(entries):
            raise ValueError(f"a bucket's entries end inside an entry ({len(entries)} bytes)")
        members.add((entries[start - length : start].decode("utf-8"), phash))
    ordered = sorted(members, key=lambda m: id_order(m[0]))
    for i, (a, a_hash) in enumerate(ordered):
        for b, b_hash in ordered[i + 1 :]:
            if hamming(a_hash, b_hash) <= distance:
                yield a, b


def alike_pair(ends: Iterable[tuple[Member, bytes]], min_similarity: float) -> list[tuple[Member, Member]]:
    """A candidate pair's two (Member, thumbnail) -> [the pair, lower id first] when the thumbnails
    correlate at ``min_similarity`` or more, else []. An end may come more than once (the pair
    was in several buckets)."""
    thumbnails = dict(ends)
    a, b = sorted(thumbnails, key=lambda m: id_order(m.id))
    return [(a, b)] if similarity(thumbnails[a], thumbnails[b]) >= min_similarity else []


def id_order(image_id: str) -> tuple[int, str]:
    """Ids in their natural order ("2" before "10"): the lowest of a group is kept."""
    return len(image_id), image_id


def duplicate_groups(edges: Iterable[tuple[Member, Member]]) -> list[dict[str, Any]]:
    """Connected components of the edges (union-find), as the groups written to ``quality/``."""
    parent: dict[str, str] = {}
    members: dict[str, Member] = {}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        for m in (a, b):
            members[m.id] = m
            parent.setdefault(m.id, m.id)
        ra, rb = root(a.id), root(b.id)
        if ra != rb:
            parent[max(ra, rb, key=id_order)] = min(ra, rb, key=id_order)
    components: dict[str, list[Member]] = {}
    for image_id in parent:
        components.setdefault(root(image_id), []).append(members[image_id])
    groups = []
    for component in components.values():
        component.sort(key=lambda m: id_order(m.id))
        # The kept one is the lowest id among the written (labelled) members, if any.
        kept = min(component, key=lambda m: (m.split == UNLABELLED_SPLIT, id_order(m.id)))
        splits = sorted({m.split for m in component})
        groups.append(
            {
                "members": [m.id for m in component],
                "member_splits": [m.split for m in component],
                "splits": splits,
                "kind": "exact" if len({m.content_hash for m in component}) == 1 else "near",
                "kept": kept.id,
                "leakage": len(splits) > 1,
            }
        )
    return sorted(groups, key=lambda g: id_order(g["members"][0]))


def dropped_duplicates(group: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, kept id) for every member of a group but the kept one (--dedupe keep_one)."""
    return [(image_id, group["kept"]) for image_id in group["members"] if image_id != group["kept"]]
