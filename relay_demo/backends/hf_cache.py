"""The transformers engine's caches: a sequence's keys and values (:class:`HFSession`), and the batch
operations on them (merge rows into one left-padded batch cache, split it back, select rows, feed rows of
uneven widths in groups and join them). See ``hf_engine.py`` for how a run uses them."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .base import Session


class HFSession(Session):
    """A sequence's keys and values: its own ``DynamicCache`` (single-stream path), or a row of the batch
    tensors of the last batched run (``shared``), kept as they are so the next round of the same rows can
    reuse them without copying row by row. Either way they hold ``ids[:n_cached]``."""

    def __init__(self, prompt_ids: list[int]):
        super().__init__(prompt_ids)
        self.cache: DynamicCache | None = None
        # (per-layer (K, V) batch tensors, row, first position)
        self.shared: tuple[list, int, int] | None = None
        self.n_cached = 0
        self.generator: torch.Generator | None = None  # per-session stream, so rounds do not repeat draws

    def forget(self, k: int) -> None:
        """Drop the last ``k`` cached positions (a shared row just masks them out)."""
        if k <= 0:
            return
        if self.cache is not None:
            self.cache.crop(-k)
        self.n_cached -= k

    def truncate(self, n: int) -> None:
        super().truncate(n)
        self.forget(self.n_cached - n)

    def row_kv(self, layer: int):
        """This sequence's keys and values of one layer, [1, heads, n_cached, dim] (views, no copy)."""
        if self.cache is not None:
            lay = self.cache.layers[layer]
            return lay.keys, lay.values
        tensors, row, start = self.shared
        k, v = tensors[layer]
        end = start + self.n_cached
        return k[row : row + 1, :, start:end], v[row : row + 1, :, start:end]

    def own_cache(self, config) -> DynamicCache:
        if self.cache is None:
            if self.shared is not None and self.n_cached:
                data = [self.row_kv(li) for li in range(len(self.shared[0]))]
                self.cache = DynamicCache(ddp_cache_data=data, config=config)
            else:
                self.cache = DynamicCache(config=config)
            self.shared = None
        return self.cache

    def release(self) -> None:
        self.cache = None
        self.shared = None
        self.n_cached = 0


def rows_of(cache: DynamicCache, rows: list[int], first: int, config) -> DynamicCache:
    """A batch cache of these rows of ``cache``, from position column ``first`` on (one copy per layer)."""
    index = torch.tensor(rows, device=cache.layers[0].keys.device)
    data = [
        (lay.keys.index_select(0, index)[:, :, first:], lay.values.index_select(0, index)[:, :, first:])
        for lay in cache.layers
    ]
    return DynamicCache(ddp_cache_data=data, config=config)


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
    """One batch cache for these sessions and its 2-D mask (1 = real position, 0 = padding or hole)."""
    bases = {  # which earlier batch each row lives in
        id(s.shared[0]) if s.shared is not None and s.cache is None else None for s in sessions
    }
    if len(bases) == 1 and None not in bases:
        # every row comes from the same earlier batch (the common case: rounds of the same sequences):
        # select the rows in one op per layer instead of copying them one by one
        tensors = sessions[0].shared[0]
        rows = [s.shared[1] for s in sessions]
        if rows != list(range(tensors[0][0].shape[0])):
            index = torch.tensor(rows, device=device)
            tensors = [(k.index_select(0, index), v.index_select(0, index)) for k, v in tensors]
        mask = torch.zeros(len(sessions), tensors[0][0].shape[2], dtype=torch.long, device=device)
        for r, s in enumerate(sessions):
            mask[r, s.shared[2] : s.shared[2] + s.n_cached] = 1
        return DynamicCache(ddp_cache_data=tensors, config=config), mask
    # mixed origins: left-pad each row's keys and values into a new batch
    past = [s.n_cached for s in sessions]
    width = max(past)
    mask = torch.zeros(len(sessions), width, dtype=torch.long, device=device)
    for r, p in enumerate(past):
        mask[r, width - p :] = 1
    if width == 0:
        return None, mask
    layers = []
    for li in range(config.get_text_config().num_hidden_layers):
        rows = [s.row_kv(li) if p else None for s, p in zip(sessions, past, strict=True)]
        ref = next(kv[0] for kv in rows if kv is not None)
        shape = (len(sessions), ref.shape[1], width, ref.shape[3])
        K, V = ref.new_zeros(shape), ref.new_zeros(shape)
        for r, (kv, p) in enumerate(zip(rows, past, strict=True)):
            if p:
                K[r, :, width - p :] = kv[0][0]
                V[r, :, width - p :] = kv[1][0]
        layers.append((K, V))
    return DynamicCache(ddp_cache_data=layers, config=config), mask


def split(sessions: list[HFSession], cache: DynamicCache, mask: torch.Tensor) -> None:
    """Compact the batch cache (real positions right-aligned, one gather per layer) and point each session
    at its row of it."""
    lengths = mask.sum(1)
    width = int(lengths.max())
    order = torch.argsort(mask, dim=1, stable=True)[:, mask.shape[1] - width :]  # holes first, then real
    tensors = []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        index = order[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        tensors.append((k.gather(2, index), v.gather(2, index)))
    for r, s in enumerate(sessions):
        assert int(lengths[r]) == s.n_cached, "cache and session disagree"
        s.cache = None
        s.shared = (tensors, r, width - s.n_cached)


def join_groups(outs: list, groups: list[list[int]], config, device):
    """One batch of the groups' (logits, cache, mask, hidden): every group as wide as the widest (masked
    columns in front), rows back in their order."""
    full = max(m.shape[1] for _, _, m, _ in outs)
    order = torch.tensor([r for rows in groups for r in rows], device=device)
    back = torch.argsort(order)
    layers = []
    for li in range(len(outs[0][1].layers)):
        ks, vs = [], []
        for _, c, m, _ in outs:
            k, v = c.layers[li].keys, c.layers[li].values
            gap = full - m.shape[1]
            if gap:
                k = torch.cat([k.new_zeros(k.shape[0], k.shape[1], gap, k.shape[3]), k], dim=2)
                v = torch.cat([v.new_zeros(v.shape[0], v.shape[1], gap, v.shape[3]), v], dim=2)
            ks.append(k)
            vs.append(v)
        layers.append((torch.cat(ks).index_select(0, back), torch.cat(vs).index_select(0, back)))
    masks = [torch.cat([m.new_zeros(m.shape[0], full - m.shape[1]), m], dim=1) for _, _, m, _ in outs]
    logits = torch.cat([lg for lg, _, _, _ in outs]).index_select(0, back)
    hidden = None if outs[0][3] is None else torch.cat([h for _, _, _, h in outs]).index_select(0, back)
    cache = DynamicCache(ddp_cache_data=layers, config=config)
    return logits, cache, torch.cat(masks).index_select(0, back), hidden
