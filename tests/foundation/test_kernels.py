"""The factored kernels against brute force: full rows of a @ w_o @ U, torch.topk, explicit counts."""

from __future__ import annotations

import pytest
import torch

from mapslib.foundation.kernels import (
    Blocks,
    KernelStats,
    Unembedding,
    count_outside,
    count_outside_many,
    topk_rows,
)


def _problem(n: int, r: int, d: int, v: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, r, generator=g, dtype=torch.float64)
    w_o = torch.randn(r, d, generator=g, dtype=torch.float64)
    U = torch.randn(d, v, generator=g, dtype=torch.float64)
    return a, w_o, U


def _brute_counts(M: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v = M[torch.arange(M.shape[0]), targets][:, None]
    return (M > v).sum(1), (M < v).sum(1)


@pytest.mark.parametrize("stride", [1, 3, 8, 64])
@pytest.mark.parametrize("blocks", [Blocks(5, 7), Blocks(512, 2048)])
def test_count_outside_matches_brute_force(stride: int, blocks: Blocks) -> None:
    a, w_o, U = _problem(n=40, r=4, d=16, v=300)
    M = a @ w_o @ U
    # targets: some top-1, some top-3, some bottom-2, some arbitrary
    order = M.argsort(dim=1, descending=True)
    targets = torch.randint(0, 300, (40,), generator=torch.Generator().manual_seed(1))
    targets[:8] = order[:8, 0]
    targets[8:16] = order[8:16, 2]
    targets[16:24] = order[16:24, -2]
    cap = 10
    above, below = count_outside(a, w_o, Unembedding.prepare(U, stride), targets, cap, blocks)
    want_above, want_below = _brute_counts(M, targets)
    assert torch.equal(above, want_above.clamp_max(cap))
    assert torch.equal(below, want_below.clamp_max(cap))
    assert (above[:8] == 0).all() and (above[8:16] == 2).all() and (below[16:24] == 1).all()


def test_count_outside_is_topk_membership() -> None:
    """`above < k` is exactly `target in torch.topk(row, k)` when there are no ties."""
    a, w_o, U = _problem(n=64, r=8, d=24, v=500, seed=3)
    M = a @ w_o @ U
    targets = M.argsort(dim=1, descending=True)[torch.arange(64), torch.arange(64) % 20]
    above, below = count_outside(a, w_o, Unembedding.prepare(U, 4), targets, 25, Blocks(16, 64))
    for k in (1, 3, 10, 25):
        top = torch.topk(M, k, dim=1).indices
        bottom = torch.topk(-M, k, dim=1).indices
        assert torch.equal(above < k, (top == targets[:, None]).any(1))
        assert torch.equal(below < k, (bottom == targets[:, None]).any(1))


def test_ties_count_on_neither_side() -> None:
    """Duplicate columns of U give exact ties; they count neither above nor below the target."""
    a, w_o, U = _problem(n=6, r=3, d=8, v=50, seed=5)
    U[:, 10] = U[:, 20]  # token 10 and 20 score identically in every row
    M = a @ w_o @ U
    targets = torch.full((6,), 20)
    above, below = count_outside(a, w_o, Unembedding.prepare(U, 5), targets, 100, Blocks(4, 8))
    want_above, want_below = _brute_counts(M, targets)
    assert torch.equal(above, want_above) and torch.equal(below, want_below)
    assert torch.equal(
        above + below, torch.full((6,), 48)
    )  # 50 columns minus target minus its twin


def test_both_associations_agree() -> None:
    """The kernel picks (a W_O) U or a (W_O U) by cost; both give the same counts."""
    # r close to d makes the direct route cheaper; r << d the factored one
    for r, d in ((30, 32), (2, 64)):
        a, w_o, U = _problem(n=50, r=r, d=d, v=200, seed=r)
        M = a @ w_o @ U
        targets = torch.arange(50) % 200
        above, below = count_outside(
            a, w_o, Unembedding.prepare(U, 1000), targets, 1000, Blocks(7, 33)
        )
        assert torch.equal(above, _brute_counts(M, targets)[0])
        assert torch.equal(below, _brute_counts(M, targets)[1])


def test_stats_record_the_work_done() -> None:
    a, w_o, U = _problem(n=30, r=4, d=16, v=400)
    M = a @ w_o @ U
    targets = M.argmax(1)  # every row is a top-1 row: none can be decided by the sample
    stats = KernelStats()
    count_outside(a, w_o, Unembedding.prepare(U, 8), targets, 10, Blocks(), stats)
    assert stats.rows == 30 and stats.full_rows == 30 and stats.flops > 0
    stats = KernelStats()
    targets = M.argmin(1)  # bottom-1 rows: undecided for suppression, so also a full pass
    count_outside(a, w_o, Unembedding.prepare(U, 8), targets, 10, Blocks(), stats)
    assert stats.full_rows == 30


def test_median_targets_are_decided_by_the_sample() -> None:
    a, w_o, U = _problem(n=30, r=4, d=16, v=4000)
    M = a @ w_o @ U
    targets = M.argsort(dim=1)[:, 2000]  # the median entry: thousands above and below
    stats = KernelStats()
    above, below = count_outside(a, w_o, Unembedding.prepare(U, 8), targets, 10, Blocks(), stats)
    assert stats.full_rows == 0
    assert (above == 10).all() and (below == 10).all()


@pytest.mark.parametrize("largest", [True, False])
def test_topk_rows_matches_torch_topk(largest: bool) -> None:
    a, w_o, U = _problem(n=12, r=4, d=16, v=5000, seed=7)
    M = a @ w_o @ U
    values, cols = topk_rows(a, w_o, U, 6, largest=largest, blocks=Blocks(4, 100))
    want_v, want_i = torch.topk(M, 6, dim=1, largest=largest)
    torch.testing.assert_close(values, want_v)
    assert torch.equal(cols, want_i)


def _answer_all(
    problems: list, want: dict, unembed: Unembedding, blocks: Blocks, max_rows: int
) -> KernelStats:
    """count_outside_many at cap 10 on `problems`; every problem answered, each with its
    brute-force counts `want[key]`. Returns the kernel's stats."""
    stats = KernelStats()
    got = {
        key: (above, below)
        for key, above, below in count_outside_many(
            problems, unembed, 10, blocks, stats, max_rows=max_rows
        )
    }
    assert sorted(got) == sorted(want)
    for key, (above, below) in got.items():
        assert torch.equal(above, want[key][0]) and torch.equal(below, want[key][1])
    return stats


@pytest.mark.parametrize("max_rows", [1, 7, 10_000])
def test_count_outside_many_stacks_heads_and_matches_brute_force(max_rows: int) -> None:
    """Problems answered together (rows stacked across heads, flushed every `max_rows`) give each
    problem's brute-force counts; heads with many undecided rows take the factored route."""
    g = torch.Generator().manual_seed(11)
    U = torch.randn(16, 600, generator=g, dtype=torch.float64)
    unembed = Unembedding.prepare(U, 8)
    problems, want = [], {}
    for key, (n, r, n_top) in enumerate([(30, 2, 30), (20, 4, 3), (25, 3, 0), (40, 2, 40)]):
        a = torch.randn(n, r, generator=g, dtype=torch.float64)
        w_o = torch.randn(r, 16, generator=g, dtype=torch.float64)
        M = a @ w_o @ U
        targets = M.argsort(dim=1)[:, 300]  # median: decided by the sample
        targets[:n_top] = M.argmax(1)[:n_top]  # top-1: needs the full pass
        problems.append((key, a, w_o, targets))
        want[key] = tuple(c.clamp_max(10) for c in _brute_counts(M, targets))
    stats = _answer_all(problems, want, unembed, Blocks(8, 64), max_rows)
    assert stats.full_rows == 30 + 3 + 40  # the top-1 rows, and no others


def test_a_bf16_unembedding_gives_the_float32_counts_and_top_k() -> None:
    """U kept in bf16 (weights-only reading) is upcast per block: the same counts and top-k as the
    same values held in float32, exactly, since bf16 -> float32 is exact and the ops are the same."""
    g = torch.Generator().manual_seed(0)
    U = torch.randn(16, 96, generator=g).to(torch.bfloat16)
    a, w_o = torch.randn(5, 4, generator=g), torch.randn(4, 16, generator=g)
    targets = torch.tensor([0, 7, 31, 64, 95])
    blocks = Blocks(rows=2, cols=32)
    narrow, wide = Unembedding.prepare(U, 4), Unembedding.prepare(U.float(), 4)
    assert narrow.rows.dtype == torch.bfloat16 and narrow.max_norm == wide.max_norm
    for x, y in zip(
        count_outside(a, w_o, narrow, targets, 3, blocks),
        count_outside(a, w_o, wide, targets, 3, blocks),
        strict=True,
    ):
        assert torch.equal(x, y)
    for x, y in zip(
        topk_rows(a, w_o, U, 3, blocks=blocks),
        topk_rows(a, w_o, U.float(), 3, blocks=blocks),
        strict=True,
    ):
        assert torch.equal(x, y)


def _near_top_targets(M: torch.Tensor, rank: int) -> torch.Tensor:
    """The entry ranked `rank` in each row (0 = largest): near the top, so a sparse sample holds too
    few entries above it, while a denser one holds enough."""
    return M.argsort(dim=1, descending=True)[:, rank]


@pytest.mark.parametrize("max_rows", [1, 10_000])
def test_rows_left_by_the_first_sample_are_settled_by_the_denser_one(max_rows: int) -> None:
    """Stride 64 (dense stride 8) on 4000 columns: targets ranked ~200 have ~3 entries above them in
    the first sample (< cap) but ~25 in the dense one, so the dense pass settles them, no full pass;
    top-1 targets go on to the full pass. The counts are brute force's either way."""
    g = torch.Generator().manual_seed(2)
    U = torch.randn(16, 4000, generator=g, dtype=torch.float64)
    unembed = Unembedding.prepare(U, 64)
    assert unembed.dense_stride == 8 and unembed.U_dense.shape == (16, 500)
    problems, want = [], {}
    for key, r in enumerate((2, 12)):  # r=2: factored route; r=12 (n*d < r*d + n*r): stacked
        a = torch.randn(20, r, generator=g, dtype=torch.float64)
        w_o = torch.randn(r, 16, generator=g, dtype=torch.float64)
        M = a @ w_o @ U
        targets = _near_top_targets(M, 200)
        targets[:4] = M.argmax(1)[:4]
        problems.append((key, a, w_o, targets))
        want[key] = tuple(c.clamp_max(10) for c in _brute_counts(M, targets))
    stats = _answer_all(problems, want, unembed, Blocks(16, 128), max_rows)
    # a rank-200 row has ~3 entries above it in the 1-in-64 sample (< cap), so all 40 rows reach the
    # dense stage; there (1 in 8: ~25 above) every rank-200 row is settled
    assert stats.dense_rows == 40
    assert stats.full_rows == 8  # only the top-1 rows of the two heads


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("u_dtype", [torch.float32, torch.bfloat16])
def test_float32_counts_are_exact_outside_the_tie_band(device: str, u_dtype: torch.dtype) -> None:
    """In float32 (on the CPU or a GPU's own kernels, U in float32 or kept in bf16), every count lies
    between the exact float64 counts of entries clearly above the target (more than twice the kernel's
    tie tolerance) and of all entries above it; rows with no entry in that band get the exact count.

    Why a band and not equality: the kernel calls entries within `tol` of the target ties (its
    contract, kernels.py); float32 rounding (< tol/2 by that tolerance's derivation) can move an entry
    whose exact distance is near `tol` to either side of it, on any device."""
    g = torch.Generator().manual_seed(21)
    n, r, d, v, cap = 64, 8, 96, 6000, 25
    a, w_o = torch.randn(n, r, generator=g), torch.randn(r, d, generator=g) / d**0.5
    U = torch.randn(d, v, generator=g).to(u_dtype).float()  # the values bf16 can hold
    M = a.double() @ w_o.double() @ U.double()  # the exact entries
    i = torch.arange(n)
    rank = torch.where(i % 2 == 0, i % 32, v - 1 - i % 32)  # near the top and near the bottom
    targets = M.argsort(dim=1, descending=True)[i, rank]
    targets[:8] = M.argmax(1)[:8]  # top-1 rows: the full pass
    unembed = Unembedding.prepare(U.to(u_dtype).to(device), 16)
    got = count_outside(a.to(device), w_o.to(device), unembed, targets.to(device), cap)
    b = a.double() @ w_o.double()
    u_t = U.double()[:, targets].T
    tol = 4 * torch.finfo(torch.float32).eps * b.norm(dim=1) * (u_t.norm(dim=1) + unembed.max_norm)
    diff = M - M[i, targets][:, None]
    diff[i, targets] = 0.0
    for sign, count in ((1, got[0].cpu()), (-1, got[1].cpu())):
        clear = (sign * diff > 2 * tol[:, None]).sum(1).clamp_max(cap)
        loose = (sign * diff > 0).sum(1).clamp_max(cap)
        assert ((clear <= count) & (count <= loose)).all()
        assert torch.equal(count[clear == loose], clear[clear == loose])
    assert (got[0][:8] == 0).all()
