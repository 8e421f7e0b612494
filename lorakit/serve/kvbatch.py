"""The KV cache of the running batch: one row per sequence, left-padded to a common length.

Newly admitted sequences are prefilled together into their own left-padded cache, which then
joins the batch: the narrower side is left-padded with zeros and the rows are concatenated.
Every decode step appends one column for all rows, so a row's real tokens are always its last
``lengths[b]`` columns and the attention mask is ``mask[b, j] = j >= L - lengths[b]``. A
finished row leaves by row selection, and columns that are padding for every remaining row are
trimmed.

Padding keys/values are never attended to (masked), so a row computes what it would compute
alone, up to float summation order.

The layers are ``SlackLayer``s: transformers' ``DynamicLayer`` appends a step with
``torch.cat``, copying the whole cache of every layer at every decode step (measured: ~5 ms of
a ~75-80 ms decode step for 32 rows on the 2-core machine); a slack layer keeps spare columns
and writes the new column in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SLACK = 64  # spare columns a slack layer allocates when it grows


class SlackLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of buffers with up to ``SLACK``
    spare columns: ``update`` copies only the new columns, and regrows (one copy) every
    ``SLACK`` decode steps. Assigning ``keys``/``values`` (as ``BatchKV`` and transformers do)
    copies the tensor into a fresh buffer with slack."""

    def __init__(self, **kwargs):
        self._k = self._v = None
        self._nk = self._nv = 0
        super().__init__(**kwargs)

    keys = property(lambda self: _view(self._k, self._nk), lambda self, t: self._assign("k", t))
    values = property(lambda self: _view(self._v, self._nv), lambda self, t: self._assign("v", t))

    def _assign(self, which: str, t) -> None:
        buf, n = _with_slack(t)
        setattr(self, "_" + which, buf)
        setattr(self, "_n" + which, n)

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
        self._k, self._nk = _append(self._k, self._nk, key_states)
        self._v, self._nv = _append(self._v, self._nv, value_states)
        return self.keys, self.values


def new_cache() -> DynamicCache:
    """An empty transformers cache whose layers are ``SlackLayer``s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = SlackLayer
    return cache


def _view(buf: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if buf is None else buf[..., :n, :]


def _with_slack(t: torch.Tensor | None, extra: int = 0) -> tuple[torch.Tensor | None, int]:
    """A buffer holding ``t`` in its first columns, with ``extra + SLACK`` spare ones."""
    if t is None or t.dim() < 2:  # transformers' lazy init assigns an empty 1-D tensor
        return None, 0
    n = t.shape[-2]
    buf = t.new_zeros(*t.shape[:-2], n + extra + SLACK, t.shape[-1])
    buf[..., :n, :].copy_(t)
    return buf, n


def _append(buf: torch.Tensor | None, n: int, new: torch.Tensor) -> tuple[torch.Tensor, int]:
    m = new.shape[-2]
    if buf is None or n + m > buf.shape[-2]:
        buf, n = _with_slack(buf[..., :n, :] if buf is not None else new[..., :0, :], extra=m)
    buf[..., n: n + m, :].copy_(new)
    return buf, n + m


class BatchKV:
    """``cache``: a transformers ``DynamicCache`` (layers hold ``keys``/``values``
    ``[rows, kv_heads, L, head_dim]``) or None when no sequence runs; ``lengths[b]``: real
    tokens of row ``b``."""

    def __init__(self):
        self.cache = None
        self.lengths: list[int] = []

    @property
    def width(self) -> int:
        """L, the padded length every row has now."""
        return max(self.lengths, default=0)

    def __len__(self) -> int:
        return len(self.lengths)

    def join(self, cache, lengths: list[int]) -> None:
        """Append the rows of ``cache``, left-padded to ``max(lengths)`` columns; row ``i``
        holds ``lengths[i]`` real tokens."""
        if self.cache is None:
            self.cache, self.lengths = cache, list(lengths)
            return
        width = max(self.width, *lengths)
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
        self.lengths += list(lengths)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); trim columns that no kept row uses."""
        if not rows:
            self.cache, self.lengths = None, []
            return
        self.lengths = [self.lengths[i] for i in rows]
        index = torch.tensor(rows, dtype=torch.long)
        for layer in self.cache.layers:
            width = self.width
            layer.keys = layer.keys.index_select(0, index.to(layer.keys.device))[:, :, -width:]
            layer.values = layer.values.index_select(0, index.to(layer.values.device))[:, :, -width:]

    def mask(self, extra: int = 1) -> torch.Tensor:
        """Attention mask ``[rows, L + extra]`` for a step that adds ``extra`` tokens per row."""
        total = self.width + extra
        cols = torch.arange(total)
        return (cols[None, :] >= total - (torch.tensor(self.lengths)[:, None] + extra)).long()

    def grew(self, extra: int = 1) -> None:
        """Record that a forward appended ``extra`` real tokens to every row."""
        self.lengths = [n + extra for n in self.lengths]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    pad = width - t.shape[-2]
    return F.pad(t, (0, 0, pad, 0)) if pad > 0 else t
