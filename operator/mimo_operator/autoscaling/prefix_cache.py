"""The prefix cache of one simulated scheduler: SGLang's radix cache at page granularity.

One model for the simulated engine (mimo_worker.simengine imports it) and the autoscaling simulator, so
the hit rates the autoscaler is tested on are the engine's.

SGLang keeps the KV of finished and running prompts in a radix tree keyed by token ids; a new request
reuses the longest cached prefix of its prompt and computes only the rest. With ``--page-size P`` the
tree matches and stores whole pages only, so a prompt's reusable part is its longest run of whole
pages already in the tree. Tokens a running request uses are *locked* (reference-counted along the
path); unlocked ones stay in the pool as *evictable* and go, least recently used leaf first, when
admission or decode needs the room (``RadixCache.evict``). SGLang's ``token_usage`` counts neither
free nor evictable slots as used, so a warm cache does not look like load.

The simulated engine has no tokenizer, so a request carries the *keys of its prompt's pages* instead of
token ids: a hash chain, key ``i`` = hash(key ``i-1``, content of page ``i``). Two prompts share key
``i`` exactly when their first ``i + 1`` pages are equal — the property a radix tree over token ids
gives — so the tree is a dict from key to node. The keys come from

* token ids (``/generate``'s ``input_ids``, a completions prompt given as ids): :func:`id_blocks`;
* text: :func:`text_blocks` over the rendered prompt, one token per ``CHARS_PER_TOKEN`` characters (the
  engine's token estimate), so two chats that begin with the same system prompt and turns share pages;
* a trace replay that sends token counts, not text: :func:`segment_blocks` over named segments
  (``[("system-7", 2000), ("doc-31", 6000)]`` + a unique rest), the extension field ``mimo_prefix``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CHARS_PER_TOKEN",
    "CacheNode",
    "RadixCache",
    "id_blocks",
    "segment_blocks",
    "text_blocks",
]

CHARS_PER_TOKEN = 4  # the engine's token estimate (server.py): one token per 4 characters of text
_ROOT = b"mimo-prefix-root"


def _chain(previous: bytes, content: bytes) -> bytes:
    return hashlib.blake2b(previous + content, digest_size=16).digest()


def _keys(pages: Iterable[bytes]) -> tuple[int, ...]:
    keys: list[int] = []
    previous = _ROOT
    for content in pages:
        previous = _chain(previous, content)
        keys.append(int.from_bytes(previous[:8], "big"))
    return tuple(keys)


def text_blocks(text: str, page_size: int) -> tuple[int, ...]:
    """Keys of the whole pages of a text prompt (``page_size`` tokens of ``CHARS_PER_TOKEN`` characters)."""
    width = page_size * CHARS_PER_TOKEN
    data = text.encode("utf-8", "surrogatepass")
    return _keys(data[i : i + width] for i in range(0, len(data) - width + 1, width))


def id_blocks(ids: Sequence[int], page_size: int) -> tuple[int, ...]:
    """Keys of the whole pages of a prompt given as token ids."""
    return _keys(
        b",".join(str(t).encode() for t in ids[i : i + page_size])
        for i in range(0, len(ids) - page_size + 1, page_size)
    )


def segment_blocks(
    segments: Sequence[tuple[str, int]], prompt_tokens: int, page_size: int, unique: str
) -> tuple[int, ...]:
    """Keys of the whole pages of a prompt made of named segments, then ``unique`` content.

    ``segments`` are (stable id, tokens) in prompt order — a system prompt, a document, the turns of a
    conversation so far; tokens past their sum, up to ``prompt_tokens``, belong to this request alone
    (``unique``: e.g. the request id). A page is described by the segment pieces it covers, so two
    prompts share the pages their common leading segments fill completely.
    """
    pieces: list[tuple[str, int, int]] = []  # (segment id, first token, end token) in prompt order
    position = 0
    for name, tokens in segments:
        if tokens <= 0:
            continue
        take = min(tokens, prompt_tokens - position)
        if take <= 0:
            break
        pieces.append((name, position, position + take))
        position += take
    if position < prompt_tokens:
        pieces.append(("\x00unique:" + unique, position, prompt_tokens))

    def pages() -> Iterable[bytes]:
        first = 0  # pieces and pages both run in prompt order: skip the pieces behind this page once
        for start in range(0, prompt_tokens - page_size + 1, page_size):
            end = start + page_size
            while pieces[first][2] <= start:
                first += 1
            parts = []
            for name, lo, hi in pieces[first:]:
                if lo >= end:
                    break
                parts.append(f"{name}[{max(start, lo) - lo}:{min(end, hi) - lo}]")
            yield "|".join(parts).encode()

    return _keys(pages())


@dataclass(eq=False)
class CacheNode:
    """One cached page."""

    key: int
    parent: CacheNode | None
    last_access: float
    refs: int = 0  # running requests whose prefix passes through this page
    children: int = 0
    stamp: int = field(default=0)  # eviction-heap bookkeeping: bumps when last_access changes


class RadixCache:
    """The page-granular radix tree of one scheduler's full-attention KV pool (token counts only).

    Sizes are in tokens (pages × ``page_size``). ``total_tokens`` is what the tree occupies in the pool;
    ``protected_tokens`` the part locked by running requests; ``evictable_tokens`` the rest.
    """

    def __init__(self, page_size: int) -> None:
        if page_size <= 0:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self.page_size = page_size
        self._nodes: dict[int, CacheNode] = {}
        self._locked_pages = 0
        self._heap: list[tuple[float, int, int, CacheNode]] = []
        self._tie = itertools.count()
        self.evicted_tokens = 0  # since start

    # ---- sizes -------------------------------------------------------------------------------------

    @property
    def total_tokens(self) -> int:
        return len(self._nodes) * self.page_size

    @property
    def protected_tokens(self) -> int:
        return self._locked_pages * self.page_size

    @property
    def evictable_tokens(self) -> int:
        return self.total_tokens - self.protected_tokens

    # ---- matching and locking ----------------------------------------------------------------------

    def match(self, keys: Sequence[int], now: float) -> list[CacheNode]:
        """The nodes of the longest cached prefix of ``keys`` (touched: most recently used now)."""
        path: list[CacheNode] = []
        for key in keys:
            node = self._nodes.get(key)
            if node is None or node.parent is not (path[-1] if path else None):
                break
            path.append(node)
        for node in path:
            node.last_access = now
        return path

    def peek(self, keys: Sequence[int]) -> int:
        """Pages of the longest cached prefix of ``keys``, touching nothing (a router's look)."""
        depth = 0
        parent: CacheNode | None = None
        for key in keys:
            node = self._nodes.get(key)
            if node is None or node.parent is not parent:
                break
            parent = node
            depth += 1
        return depth

    def lock(self, path: Sequence[CacheNode]) -> None:
        for node in path:
            if node.refs == 0:
                self._locked_pages += 1
            node.refs += 1

    def unlock(self, path: Sequence[CacheNode], now: float) -> None:
        for node in path:
            node.refs -= 1
            if node.refs < 0:
                raise RuntimeError("a cache page was unlocked more often than locked")
            if node.refs == 0:
                self._locked_pages -= 1
                node.last_access = max(node.last_access, now)
                if node.children == 0:
                    self._push(node)

    def extend(self, path: list[CacheNode], keys: Sequence[int], now: float) -> int:
        """Insert the pages ``keys`` after ``path`` (a locked prefix), lock them, append them to ``path``.

        Returns how many pages were new to the tree; the others were cached meanwhile by another request
        (SGLang then frees the duplicate KV the inserting request computed).
        """
        created = 0
        for key in keys:
            parent = path[-1] if path else None
            node = self._nodes.get(key)
            if node is None or node.parent is not parent:
                if node is not None:
                    break  # a key collision on another branch: stop caching this prompt here
                node = CacheNode(key, parent, now)
                self._nodes[key] = node
                if parent is not None:
                    parent.children += 1
                created += 1
            node.last_access = now
            self.lock((node,))
            path.append(node)
        return created

    # ---- eviction ----------------------------------------------------------------------------------

    def evict(self, tokens: int) -> int:
        """Free at least ``tokens`` (whole pages) of unlocked leaves, least recently used first, or as
        much as there is. Returns the tokens freed."""
        freed = 0
        while freed < tokens and self._heap:
            last_access, stamp, _, node = heapq.heappop(self._heap)
            if self._nodes.get(node.key) is not node or node.refs or node.children or stamp != node.stamp:
                continue  # stale entry: the node went, is in use again, or has a newer entry
            if last_access != node.last_access:
                self._push(node)  # touched since it was queued: requeue at its real age
                continue
            del self._nodes[node.key]
            freed += self.page_size
            parent = node.parent
            if parent is not None:
                parent.children -= 1
                if parent.children == 0 and parent.refs == 0:
                    self._push(parent)
        self.evicted_tokens += freed
        return freed

    def clear(self) -> bool:
        """``/flush_cache``: drop the whole tree; refused (False) while running requests lock pages."""
        if self._locked_pages:
            return False
        self._nodes.clear()
        self._heap.clear()
        return True

    def _push(self, node: CacheNode) -> None:
        node.stamp += 1
        heapq.heappush(self._heap, (node.last_access, node.stamp, next(self._tie), node))
