"""The transformers engine's caches: a sequence's keys and values (:class:`HFSession`), and the batch
operations on them (merge rows into one left-padded batch cache, split it back, select rows, feed rows of
uneven widths in groups and join them). See ``hf_engine.py`` for how a run uses them."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .base import Session

# merge compacts a batch wider than this many times its longest row's positions: of 1, 1.25, 2 and never,
# 1.25 was the quickest on benchmarks/throughput.py's tiny pair (transformers, 2026-12-03), by 2-5%
COMPACT_AT = 1.25


class HFSession(Session):
    """A sequence's keys and values: its own ``DynamicCache`` (single-stream path), or a row of the batch
    tensors of the last batched run (``shared``), kept as they are, holes included, so that the next run of
    the same rows takes them without a copy. Either way they hold ``ids[:n_cached]``."""

    def __init__(self, prompt_ids: list[int]):
        super().__init__(prompt_ids)
        self.cache: DynamicCache | None = None
        # (per-layer (K, V) batch tensors, row, the row's columns: 1 = one of its positions, in order)
        self.shared: tuple[list, int, torch.Tensor] | None = None
        self.n_cached = 0
        self.generator: torch.Generator | None = None  # per-session stream, so rounds do not repeat draws

    def forget(self, k: int) -> None:
        """Drop the last ``k`` cached positions (a shared row just masks them out)."""
        if k <= 0:
            return
        if self.cache is not None:
            self.cache.crop(-k)
        elif self.shared is not None:  # a copy: the batch mask may be an inference tensor
            tensors, row, cols = self.shared
            cols = cols.clone()
            cols[cols.nonzero()[-k:, 0]] = 0
            self.shared = (tensors, row, cols)
        self.n_cached -= k

    def truncate(self, n: int) -> None:
        super().truncate(n)
        self.forget(self.n_cached - n)

    def row_kv(self, layer: int):
        """This sequence's keys and values of one layer, [1, heads, n_cached, dim] (views when its columns
        are contiguous, else a copy without the holes)."""
        if self.cache is not None:
            lay = self.cache.layers[layer]
            return lay.keys, lay.values
        tensors, row, cols = self.shared
        k, v = tensors[layer]
        real = cols.nonzero()[:, 0]
        if int(real[-1] - real[0]) + 1 == len(real):
            start, end = int(real[0]), int(real[-1]) + 1
            return k[row : row + 1, :, start:end], v[row : row + 1, :, start:end]
        return k[row : row + 1].index_select(2, real), v[row : row + 1].index_select(2, real)

    def own_cache(self, config) -> DynamicCache:
        if self.cache is None:
            if self.shared is not None and self.n_cached:
                data = [self.row_kv(li) for li in range(len(self.shared[0]))]
                self.cache = as_cache(data, config)
            else:
                self.cache = DynamicCache(config=config)
            self.shared = None
        return self.cache

    def release(self) -> None:
        self.cache = None
        self.shared = None
        self.n_cached = 0


def as_cache(tensors: list, config) -> DynamicCache:
    """A ``DynamicCache`` over these per-layer (K, V), taken as they are: its own constructor copies them."""
    cache = DynamicCache(config=config)
    for layer, (k, v) in zip(cache.layers, tensors, strict=True):
        if type(layer) is DynamicLayer:
            layer.lazy_initialization(k, v)
            layer.keys, layer.values = k, v
        else:  # a sliding-window layer keeps only its window: let it choose
            layer.update(k, v)
    return cache


def rows_of(cache: DynamicCache, rows: list[int], first: int, config) -> DynamicCache:
    """A batch cache of these rows of ``cache``, from position column ``first`` on (one copy per layer)."""
    index = torch.tensor(rows, device=cache.layers[0].keys.device)
    data = [
        (lay.keys.index_select(0, index)[:, :, first:], lay.values.index_select(0, index)[:, :, first:])
        for lay in cache.layers
    ]
    return as_cache(data, config)


def width_groups(widths: list[int], min_saving: int = 64) -> list[list[int]]:
    """Rows (indices) in one group, or in two (narrow ones, wide ones) when that spares at least half the
    padded positions and ``min_saving`` of them: a forward has a fixed cost too."""
    order = sorted(range(len(widths)), key=lambda r: widths[r])
    one = len(widths) * widths[order[-1]]
    best, cut = one, 0
    for k in range(1, len(order)):  # the first k rows form the narrow group
        cost = k * widths[order[k - 1]] + (len(order) - k) * widths[order[-1]]
        if cost < best:
            best, cut = cost, k
    if cut == 0 or best > one / 2 or one - best < min_saving:
        return [list(range(len(widths)))]
    return [order[:cut], order[cut:]]


def merge(sessions: list[HFSession], config, device):
    """One batch cache for these sessions and its 2-D mask (1 = real position, 0 = padding or hole). The
    rows of each earlier batch are selected in one op per layer (none at all when they are that batch's
    rows in order: the common case, the student's rows coming back after a handoff); the parts are
    left-padded to one width. Holes stay masked until the batch is more than ``COMPACT_AT`` times as wide as
    its longest row."""
    parts: dict = {}  # where each row's keys and values live -> its rows (indices into sessions)
    for r, s in enumerate(sessions):
        if s.n_cached:
            parts.setdefault(id(s.shared[0]) if s.cache is None else ("own", r), []).append(r)
    fresh = [r for r, s in enumerate(sessions) if not s.n_cached]
    if not parts:
        return None, torch.zeros(len(sessions), 0, dtype=torch.long, device=device)
    blocks = []
    for rows in parts.values():
        s0 = sessions[rows[0]]
        if s0.cache is not None:  # a session that ran alone: its own cache, no holes
            tensors = [(lay.keys, lay.values) for lay in s0.cache.layers]
            mask = torch.ones(1, s0.n_cached, dtype=torch.long, device=device)
        else:
            tensors, picked = s0.shared[0], [sessions[r].shared[1] for r in rows]
            if picked != list(range(tensors[0][0].shape[0])):
                index = torch.tensor(picked, device=device)
                tensors = [(k.index_select(0, index), v.index_select(0, index)) for k, v in tensors]
            mask = torch.stack([sessions[r].shared[2] for r in rows]).to(torch.long)
        blocks.append((rows, tensors, mask))
    if fresh:  # rows with nothing cached yet: all holes
        layers, k = blocks[0][1], blocks[0][1][0][0]
        zero = k.new_zeros(len(fresh), k.shape[1], 0, k.shape[3])
        none = torch.zeros(len(fresh), 0, dtype=torch.long, device=device)
        blocks.append((fresh, [(zero, zero)] * len(layers), none))
    tensors, mask = stack_blocks([(t, m) for _, t, m in blocks], [rows for rows, _, _ in blocks])
    first = int(mask.any(0).long().argmax())  # columns that are holes in every row go
    if first:
        tensors, mask = [(k[:, :, first:], v[:, :, first:]) for k, v in tensors], mask[:, first:]
    longest = max(s.n_cached for s in sessions)
    if mask.shape[1] > COMPACT_AT * longest:  # too many holes: compact them away
        tensors, mask = compact(tensors, mask, longest)
    return as_cache(tensors, config), mask


def stack_blocks(blocks: list, groups: list[list[int]]):
    """One batch of blocks of rows ((per-layer (K, V), mask) each): every block left-padded to the widest
    with masked columns, rows put back in their order (``groups[b]``: the rows block ``b`` holds)."""
    if len(blocks) == 1 and groups[0] == list(range(len(groups[0]))):
        return blocks[0]
    full = max(m.shape[1] for _, m in blocks)
    order = [r for rows in groups for r in rows]
    back = torch.argsort(torch.tensor(order, device=blocks[0][1].device))

    def pad(x, gap):  # gap masked columns in front of dim 2
        return torch.cat([x.new_zeros(x.shape[0], x.shape[1], gap, x.shape[3]), x], dim=2) if gap else x

    layers = []
    for li in range(len(blocks[0][0])):
        ks = [pad(t[li][0], full - m.shape[1]) for t, m in blocks]
        vs = [pad(t[li][1], full - m.shape[1]) for t, m in blocks]
        layers.append((torch.cat(ks).index_select(0, back), torch.cat(vs).index_select(0, back)))
    masks = [torch.cat([m.new_zeros(m.shape[0], full - m.shape[1]), m], dim=1) for _, m in blocks]
    return layers, torch.cat(masks).index_select(0, back)


def compact(tensors: list, mask: torch.Tensor, width: int):
    """The batch tensors with each row's real positions right-aligned in ``width`` columns (one gather per
    layer), and their mask."""
    order = torch.argsort(mask, dim=1, stable=True)[:, mask.shape[1] - width :]  # holes first, then real
    out = []
    for k, v in tensors:
        index = order[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        out.append((k.gather(2, index), v.gather(2, index)))
    return out, mask.gather(1, order)


def split(sessions: list[HFSession], cache: DynamicCache, mask: torch.Tensor, rows=None) -> None:
    """Point each session at its row of the batch cache (``rows``: which row, default the k-th), holes
    and all: nothing is copied (``merge`` compacts them once there are too many)."""
    tensors = [(layer.keys, layer.values) for layer in cache.layers]
    rows = range(len(sessions)) if rows is None else rows
    lengths = mask.sum(1).tolist()
    for s, r in zip(sessions, rows, strict=True):
        assert lengths[r] == s.n_cached, "cache and session disagree"
        s.cache = None
        s.shared = (tensors, r, mask[r])


def join_groups(outs: list, groups: list[list[int]], config, device):
    """One batch of the groups' (logits, cache, mask, hidden): every group as wide as the widest (masked
    columns in front), rows back in their order."""
    blocks = [([(lay.keys, lay.values) for lay in c.layers], m) for _, c, m, _ in outs]
    layers, mask = stack_blocks(blocks, groups)
    back = torch.argsort(torch.tensor([r for rows in groups for r in rows], device=device))
    logits = torch.cat([lg for lg, _, _, _ in outs]).index_select(0, back)
    hidden = None if outs[0][3] is None else torch.cat([h for _, _, _, h in outs]).index_select(0, back)
    return logits, as_cache(layers, config), mask, hidden
