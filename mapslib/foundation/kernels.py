"""Matrix kernels over rows of M = A @ W_O @ U, never forming |V| x |V| nor d x d.

A head's rows for a set of source tokens are `a @ w_o @ U`, where `a = E_in[src] @ W_V` is n x d_head
(d_head << d) and is shared by all query heads that read the same kv head. Two questions are asked of
such rows, always in column blocks so memory stays bounded:

* `count_outside`: for each row, how many entries lie above / below the row's target entry. The target
  is in the top-k (bottom-k) of its row iff fewer than k entries lie above (below) it, so one pass
  answers promotion and suppression for every k up to `cap`. It first counts over a fixed sample of
  columns: a row with `cap` or more entries on both sides within the sample is decided, exactly, without
  its other columns. On a large vocabulary the rows it leaves undecided are counted again over a denser
  sample (8 times the columns; it contains the first), and only the rows still undecided get a full
  pass. The answer is exact; the samples only change the speed. An entry within floating-point error
  of the target (a few eps times ||row of E_in W_VO|| * ||U columns||) is a tie and counts on neither
  side: the most favourable tie-break, and one that does not depend on which product computed which
  entry.
* `topk_rows`: the top-k entries (values and columns) of each row, for salient mappings.

The full-row pass picks the cheaper association per head: `(a @ w_o) @ U` costs m*d*V, while
`a @ (w_o @ U)` costs (d_head*d + m*d_head)*V, like TransformerLens' FactoredMatrix. Over many heads
(`count_outside_many`), the rows that take the direct route are stacked across heads, so one pass
over U serves a batch of heads: the pass is bound by reading U, not by its multiply-adds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class Blocks:
    """Block sizes for the row x column tiles; sized so a tile stays in cache on CPU."""

    rows: int = 512
    cols: int = 2048

    @staticmethod
    def for_device(device: torch.device) -> Blocks:
        """Larger tiles on a GPU, cache-sized tiles on a CPU."""
        return Blocks(4096, 16384) if device.type == "cuda" else Blocks()


def default_stride(vocab_size: int) -> int:
    """A power of two giving a sample of about 6k columns: fastest for 49k (8) and 262k (32) vocabularies."""
    return 2 ** max(0, round(math.log2(vocab_size / 6144)))


DENSER = 8  # the second sample has this many times the first's columns (when its stride is >= 2)


@dataclass
class KernelStats:
    """What `count_outside` actually did: rows seen, rows counted over the denser sample, rows
    needing a full pass, multiply-adds x 2."""

    rows: int = 0
    dense_rows: int = 0
    full_rows: int = 0
    flops: float = 0.0


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype U is multiplied in: float32 for a bf16 or fp16 U (upcast per block), else its own."""
    return torch.promote_types(dtype, torch.float32)


@dataclass(frozen=True)
class Unembedding:
    """U (d x |V|) kept as its row-major transpose (the lm_head weight, no copy), plus a column sample."""

    rows: Tensor  # (|V|, d): row t is U[:, t]
    U_sample: Tensor  # (d, |V| / stride): every stride-th column of U
    stride: int

    @property
    def dense_stride(self) -> int:
        """Stride of the second, denser sample; 0 when it would be the whole of U."""
        s = self.stride // DENSER
        return s if s >= 2 else 0

    @property
    def U_dense(self) -> Tensor:
        """Every dense_stride-th column of U, a view (no copy): (d, |V| / dense_stride)."""
        return self.rows[:: self.dense_stride].T

    @staticmethod
    def prepare(U: Tensor, stride: int | None = None) -> Unembedding:
        """Wrap U (d x |V|) and take a strided sample of its columns, used to decide rows early."""
        rows = U.T.contiguous()  # a no-op for U = lm_head.weight.T
        stride = stride or default_stride(rows.shape[0])
        sample = rows[::stride].T.contiguous().to(_wide(rows.dtype))  # bf16/fp16 U: float32
        return Unembedding(rows, sample, stride)

    @property
    def U(self) -> Tensor:
        return self.rows.T

    @cached_property
    def max_norm(self) -> float:
        """The largest column norm of U, which bounds the rounding error of any entry of M."""
        wide = _wide(self.rows.dtype)
        if self.rows.dtype == wide:
            return float(self.rows.norm(dim=1).max())
        step = 8192  # a bf16/fp16 U: in float32, a block of rows at a time
        return max(
            float(self.rows[i : i + step].to(wide).norm(dim=1).max())
            for i in range(0, self.vocab_size, step)
        )

    @property
    def vocab_size(self) -> int:
        return self.rows.shape[0]


def tie_tolerance(rows: Tensor, u_t: Tensor, unembed: Unembedding) -> Tensor:
    """How far an entry of `rows @ U` may lie from the target's by rounding alone: closer entries are
    ties, in the target's favour. Both the target and an entry j carry rounding errors below
    ~3 eps ||row|| ||u|| (measured on SmolLM2 for both associations), so
    4 eps ||row|| (||u_t|| + max_j ||u_j||) bounds their difference with margin."""
    eps = torch.finfo(rows.dtype).eps
    return 4 * eps * rows.norm(dim=1) * (u_t.norm(dim=1) + unembed.max_norm)


def _count_block(
    blk: Tensor, v: Tensor, tol: Tensor, local_target: Tensor
) -> tuple[Tensor, Tensor]:
    """Entries of each row of `blk` more than `tol` above and below `v` (closer ones are ties).

    `blk` is overwritten. `local_target[i]` is the target's column within the block, or -1.
    """
    blk.sub_(v[:, None])
    inside = (local_target >= 0).nonzero().squeeze(1)
    if inside.numel():
        blk[inside, local_target[inside]] = 0.0
    other = blk.clone()
    # in-place comparisons on floats and float sums are several times faster than bool reductions
    return blk.gt_(tol[:, None]).sum(1), other.lt_(-tol[:, None]).sum(1)


def _count_over_columns(
    x: Tensor,
    columns: Callable[[int, int], Tensor],
    n_cols: int,
    v: Tensor,
    tol: Tensor,
    target_col: Tensor,
    blocks: Blocks,
) -> tuple[Tensor, Tensor]:
    """Above/below counts of rows of `x @ columns(0, n_cols)` against `v`, tiled; `target_col` may be -1."""
    n = x.shape[0]
    above = torch.zeros(n, dtype=torch.float32, device=x.device)
    below = torch.zeros_like(above)
    for c0 in range(0, n_cols, blocks.cols):
        c1 = min(c0 + blocks.cols, n_cols)
        cols = columns(c0, c1)
        local = target_col - c0
        local = torch.where(
            (target_col >= c0) & (target_col < c1), local, torch.full_like(local, -1)
        )
        for r0 in range(0, n, blocks.rows):
            r1 = min(r0 + blocks.rows, n)
            a, b = _count_block(x[r0:r1] @ cols, v[r0:r1], tol[r0:r1], local[r0:r1])
            above[r0:r1] += a
            below[r0:r1] += b
    return above, below


def _cost(n: int, r: int, d: int) -> int:
    """Multiply-adds per column of U for n rows: a (W_O U) if that is cheaper, else (a W_O) U."""
    return min(r * d + n * r, n * d)


Columns = Callable[[int, int], Tensor]


def _route(
    a: Tensor | None, b: Tensor, w_o: Tensor | None, U: Tensor
) -> tuple[Tensor, Columns, int]:
    """Left rows, a column-block function and multiply-adds per column for rows of a @ w_o @ U = b @ U,
    in the cheaper association; `a` None: only b (rows stacked from several heads)."""
    n, d = b.shape
    if a is not None and w_o is not None and _cost(n, *w_o.shape) < n * d:
        return a, lambda c0, c1: w_o @ U[:, c0:c1].to(w_o.dtype), _cost(n, *w_o.shape)
    return b, lambda c0, c1: U[:, c0:c1].to(b.dtype), n * d


def _in_sample(targets: Tensor, stride: int) -> Tensor:
    """Each target's column within the every-`stride`-th sample of U's columns, or -1 if not in it."""
    return torch.where(targets % stride == 0, targets // stride, torch.full_like(targets, -1))


def _undecided(above: Tensor, below: Tensor, cap: int) -> Tensor:
    """Rows with fewer than `cap` entries counted on either side: counts so far do not settle them."""
    return ((above < cap) | (below < cap)).nonzero().squeeze(1)


@dataclass
class _Pending:
    """A problem whose sample pass is done: its counts so far and its undecided rows."""

    key: object
    above: Tensor
    below: Tensor
    todo: Tensor  # indices of the undecided rows


def _sample_pass(
    a: Tensor,
    w_o: Tensor,
    unembed: Unembedding,
    targets: Tensor,
    cap: int,
    blocks: Blocks,
    stats: KernelStats | None,
) -> tuple[Tensor, Tensor, Tensor, _Pending]:
    """Counts over the first column sample; returns b = a W_O, target entries v, tolerances, and the
    counts with the rows they leave undecided."""
    b = a @ w_o  # (n, d): rows of E_in W_VO, cheap
    u_t = unembed.rows[targets].to(a.dtype)
    v = (b * u_t).sum(1)  # the target entries
    tol = tie_tolerance(b, u_t, unembed)
    x, cols, cost = _route(a, b, w_o, unembed.U_sample)
    n_sample = unembed.U_sample.shape[1]
    above, below = _count_over_columns(
        x, cols, n_sample, v, tol, _in_sample(targets, unembed.stride), blocks
    )
    if stats is not None:
        stats.rows += a.shape[0]
        stats.flops += 2 * (b.numel() * a.shape[1] + cost * n_sample)
    return b, v, tol, _Pending(None, above, below, _undecided(above, below, cap))


def _settle(
    a: Tensor | None,
    b: Tensor,
    w_o: Tensor | None,
    v: Tensor,
    tol: Tensor,
    targets: Tensor,
    unembed: Unembedding,
    cap: int,
    blocks: Blocks,
    stats: KernelStats | None,
) -> tuple[Tensor, Tensor]:
    """Counts for rows the first sample left undecided: over the denser sample (a row with `cap` on
    both sides there is settled), then over all of U for the rows still undecided."""
    n = b.shape[0]
    above = torch.zeros(n, dtype=torch.float32, device=b.device)
    below = torch.zeros_like(above)
    todo = torch.arange(n, device=b.device)
    stages = [(unembed.U_dense, unembed.dense_stride)] if unembed.dense_stride else []
    for U, stride in [*stages, (unembed.U, 1)]:
        if not todo.numel():
            break
        sub = (None if a is None else a[todo], b[todo], w_o)
        x, cols, cost = _route(*sub, U)
        above[todo], below[todo] = _count_over_columns(
            x, cols, U.shape[1], v[todo], tol[todo], _in_sample(targets[todo], stride), blocks
        )
        if stats is not None:
            stats.flops += 2 * cost * U.shape[1]
            if stride > 1:
                stats.dense_rows += todo.numel()
            else:
                stats.full_rows += todo.numel()
        todo = _undecided(above, below, cap) if stride > 1 else todo[:0]
    return above, below


def count_outside_many(
    problems: Iterable[tuple[object, Tensor, Tensor, Tensor]],
    unembed: Unembedding,
    cap: int,
    blocks: Blocks | None = None,
    stats: KernelStats | None = None,
    max_rows: int = 8192,
) -> Iterator[tuple[object, Tensor, Tensor]]:
    """`count_outside` for many (key, a, w_o, targets) problems, e.g. every head of a model; yields
    (key, above, below) as each is answered, not necessarily in order.

    A head whose undecided rows are cheaper in the direct association, (a W_O) U, does not stream U on
    its own: its rows wait, stacked with other heads', until `max_rows` wait, and one pass over U (and
    over the denser sample before it) then answers them all. Same multiply-adds, but U (|V| x d, 0.9 GB
    for Qwen2.5-1.5B) is read once per batch of heads instead of once per head. Heads with many
    undecided rows keep the factored route.
    """
    blocks = blocks or Blocks.for_device(unembed.rows.device)
    waiting: list[tuple[_Pending, Tensor, Tensor, Tensor, Tensor]] = []  # (item, rows, v, tol, tgt)
    n_waiting = 0
    for key, a, w_o, targets in problems:
        b, v, tol, item = _sample_pass(a, w_o, unembed, targets, cap, blocks, stats)
        item.key, todo, (r, d), m = key, item.todo, w_o.shape, item.todo.numel()
        if m and _cost(m, r, d) < m * d:  # factored is cheaper: this head streams U on its own
            item.above[todo], item.below[todo] = _settle(
                a[todo],
                b[todo],
                w_o,
                v[todo],
                tol[todo],
                targets[todo],
                unembed,
                cap,
                blocks,
                stats,
            )
        elif m:
            waiting.append((item, b[todo], v[todo], tol[todo], targets[todo]))
            n_waiting += m
            if n_waiting >= max_rows:
                yield from _stacked_pass(waiting, unembed, cap, blocks, stats)
                waiting, n_waiting = [], 0
            continue
        yield key, item.above.clamp_max(cap).long(), item.below.clamp_max(cap).long()
    if waiting:
        yield from _stacked_pass(waiting, unembed, cap, blocks, stats)


def _stacked_pass(
    waiting: list[tuple[_Pending, Tensor, Tensor, Tensor, Tensor]],
    unembed: Unembedding,
    cap: int,
    blocks: Blocks,
    stats: KernelStats | None,
) -> Iterator[tuple[object, Tensor, Tensor]]:
    """Every waiting head's undecided rows, stacked, settled together: one pass over U for all."""
    rows, v, tol, tgt = (torch.cat([w[i] for w in waiting]) for i in range(1, 5))
    above, below = _settle(None, rows, None, v, tol, tgt, unembed, cap, blocks, stats)
    at = 0
    for item, part, *_ in waiting:
        m = part.shape[0]
        item.above[item.todo], item.below[item.todo] = above[at : at + m], below[at : at + m]
        at += m
        yield item.key, item.above.clamp_max(cap).long(), item.below.clamp_max(cap).long()


def count_outside(
    a: Tensor,
    w_o: Tensor,
    unembed: Unembedding,
    targets: Tensor,
    cap: int,
    blocks: Blocks | None = None,
    stats: KernelStats | None = None,
) -> tuple[Tensor, Tensor]:
    """For each row i of M = a @ w_o @ U: entries above and below M[i, targets[i]], capped at `cap`.

    `targets[i]` is in the top-k of row i iff `above[i] < k`, and in the bottom-k iff `below[i] < k`,
    for any k <= cap. Returns two int64 tensors of length n.
    """
    ((_, above, below),) = count_outside_many(
        [(None, a, w_o, targets)], unembed, cap, blocks, stats
    )
    return above, below


def topk_rows(
    a: Tensor,
    w_o: Tensor,
    U: Tensor,
    k: int,
    largest: bool = True,
    blocks: Blocks | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k (or bottom-k) values and column indices of each row of a @ w_o @ U, over all of U's columns."""
    blocks = blocks or Blocks.for_device(a.device)
    n, V = a.shape[0], U.shape[1]
    r, d = w_o.shape
    use_factored = r * d + n * r < n * d
    x = a if use_factored else a @ w_o
    best_v = torch.full((n, 0), 0.0, device=a.device)
    best_i = torch.zeros((n, 0), dtype=torch.long, device=a.device)
    for c0 in range(0, V, blocks.cols * 4):
        c1 = min(c0 + blocks.cols * 4, V)
        cols = U[:, c0:c1].to(a.dtype)  # a bf16/fp16 U is upcast one block at a time
        cols = w_o @ cols if use_factored else cols
        vals = x @ cols
        kk = min(k, c1 - c0)
        bv, bi = torch.topk(vals, kk, dim=1, largest=largest)
        best_v = torch.cat([best_v, bv], 1)
        best_i = torch.cat([best_i, bi + c0], 1)
        if best_v.shape[1] > k:
            best_v, sel = torch.topk(best_v, k, dim=1, largest=largest)
            best_i = best_i.gather(1, sel)
    return best_v, best_i
