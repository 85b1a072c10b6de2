"""`norms="fold"`: the folded map is a head's direct contribution to the logits through the model's
own norms, up to one positive factor per row; `ignore` is the plain weights; weights-only reading
gives the same folded tensors.

The reference is computed by the model's modules, not by the adapter: the layer's input norm and
its attention run on E_in rows as sequences of one token (one key, so the attention weight is
exactly 1 and z is the value: no q, k or position enters), hooks take z at the output projection,
head h's part of z goes through the output projection, Gemma's post-attention norm, the final norm
and the lm_head. The tiny models' norm weights are random (tiny_models.randomize_: init + N(0, 0.3^2)),
so every norm weight matters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import ARCHS, build, tiny_config, tiny_model
from torch import Tensor, nn
from torch.testing import assert_close
from transformers import AutoModelForCausalLM

from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights, NormFolded
from mapslib.foundation.checkpoint import CheckpointSource, SafetensorsStore
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.heads import head_factors
from mapslib.foundation.settings import NORMS, MapSettings
from mapslib.relation_map.relations import Relation, TokenizedRelation
from mapslib.relation_map.scores import relation_scores

TOKENS = torch.tensor([3, 17, 50, 64, 99, 127])
TOP_K = 5


class _Stop(Exception):
    """Ends a forward pass once z is taken."""


def _norm_scale_one(x: Tensor, norm: nn.Module) -> Tensor:
    """x rescaled per row so that `norm` divides it by exactly 1: mean(x^2) + eps = 1 (RMSNorm) or
    var(x) + eps = 1 (LayerNorm). Then the forward pass's value is x W_V' + b_V' with no scale."""
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    spread = x.var(-1, unbiased=False) if isinstance(norm, nn.LayerNorm) else x.pow(2).mean(-1)
    return x * ((1 - eps) / spread).sqrt()[:, None]


def _z(model: nn.Module, hw: HeadWeights, layer: int, x: Tensor) -> Tensor:
    """z (rows, n_heads * d_head) of `layer` when its input norm reads rows x, each as a sequence
    of one token: the model's own norm, value projection and attention (weight 1 on itself)."""
    seen: dict[str, Tensor] = {}
    norm = hw.source.module(hw.attn_norm_path(layer))

    def swap(_m, args):
        return (x[:, None, :], *args[1:])

    def grab(_m, args):
        seen["z"] = args[0][:, 0]
        raise _Stop

    handles = [norm.register_forward_pre_hook(swap)]
    handles.append(hw.out_proj(layer).register_forward_pre_hook(grab))
    try:
        model(torch.zeros(len(x), 1, dtype=torch.long))
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return seen["z"]


def forward_rows(
    model: nn.Module, hw: HeadWeights, layer: int, head: int, x: Tensor, bias: str
) -> tuple[Tensor, Tensor]:
    """Head `head`'s direct contribution to the logits from rows x, through the model's modules,
    and the final norm's output f (for the rounding bound). Biases the map leaves out for `bias`
    are taken out by subtracting the same modules' output on zeros: z(0) is the value the norm's
    bias and b_V give, proj(0) is b_O, final_norm(0) its bias, lm_head(0) its bias."""
    z = _z(model, hw, layer, torch.cat([x, x.new_zeros(1, x.shape[1])]))
    z, z0 = z[:-1], z[-1:]
    if bias == "none":
        z = z - z0
    cols = slice(head * hw.d_head, (head + 1) * hw.d_head)
    z_h = torch.zeros_like(z)
    z_h[:, cols] = z[:, cols]
    proj = hw.out_proj(layer)
    y = proj(z_h)
    if bias != "value+output":
        y = y - proj(torch.zeros_like(z_h))
    post = hw.attention_out_norm_module(layer)
    if post is not None:  # Gemma: its RMS over this head alone, a positive factor per row as well
        y = post(y)
    final, lm_head = hw.final_norm_module(), model.get_output_embeddings()
    f = final(y) - final(torch.zeros_like(y))
    return lm_head(f) - lm_head(torch.zeros_like(f)), f


def map_rows(hw: HeadWeights, layer: int, head: int, x: Tensor, bias: str) -> Tensor:
    """Rows of the head's map for rows x, as every analysis gets them: head_factors, then U."""
    (f,) = head_factors(hw, [layer], lambda _: x, heads=lambda _: [head], bias=bias)
    return f.a @ f.w_o @ hw.unembedding()


def proportionality(m: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the least-squares factor c with r ~ c m, and the largest |r - c m|."""
    c = (m * r).sum(1) / (m * m).sum(1)
    return c, (r - c[:, None] * m).abs().amax(1)


def rounding_bound(f: Tensor, U: Tensor) -> Tensor:
    """Per row, the rounding a logit of the reference may carry: RMSNorms compute in float32 even
    in a float64 model (Llama's `to(float32)`, Gemma's `x.float()`), so each entry of f is off by a
    few float32 ulps relative to itself, after up to three norms in a row; a logit sum_i f_i U_i is
    then off by at most ~eps32 * sum_i |f_i U_i| per norm. Bound: 64 eps32 of that sum (measured
    on the tiny models: RMSNorm families use at most 1.2% of it; LayerNorm families compute in
    float64, 1e-10 of it; the `ignore` map misses by 3e4 times it)."""
    return 64 * torch.finfo(torch.float32).eps * (f.abs() @ U.abs()).amax(1)


# -- 1. the folded map is the forward pass's, up to a positive factor per row -----------------------
@pytest.mark.parametrize("bias", ["none", "value", "value+output"])
def test_folded_map_is_the_heads_contribution_to_the_logits(
    arch: str, model, hw: HeadWeights, bias: str
) -> None:
    """For E_in rows of a few tokens, every head of both layers: the `fold` row is a positive
    multiple of the head's direct logits (within float32 rounding), with the same top-k; the
    `ignore` row is not (the check has the power to tell). With a bias, the rows are rescaled so
    that the input norm's scale is 1: the map adds b_V (b_O) to x W_V' unscaled, as the forward
    pass adds them to the normed row."""
    folded, U = hw.with_norms("fold"), hw.unembedding()
    inputs = InputEmbeddings(hw, TOKENS, "paper")
    for layer in range(hw.n_layers):
        x = inputs.for_layer(layer)
        if bias != "none":
            x = _norm_scale_one(x, hw.source.module(hw.attn_norm_path(layer)))
        for head in range(hw.n_heads):
            name = f"{arch} {layer}.{head} bias={bias}"
            r, f = forward_rows(model, hw, layer, head, x, bias)
            tol = rounding_bound(f, U)
            m = map_rows(folded, layer, head, x, bias)
            c, err = proportionality(m, r)
            assert (c > 0).all(), name
            assert (err <= tol).all(), f"{name}: {err / tol}"
            assert torch.equal(m.topk(TOP_K).indices, r.topk(TOP_K).indices), name
            _, err_ignore = proportionality(map_rows(hw, layer, head, x, bias), r)
            assert (err_ignore > 1000 * tol).any(), name


# -- 2. ignore is today's weights; fold changes only W_V, b_V, W_O, b_O --------------------------------
def test_ignore_is_the_plain_weights(arch: str, model, hw: HeadWeights) -> None:
    """`ignore` returns the object itself, whose tensors are those of a fresh HeadWeights."""
    assert hw.with_norms("ignore") is hw and hw.norms == "ignore"
    fresh = HeadWeights(model)
    for layer in range(hw.n_layers):
        for name in ("W_V", "b_V", "W_O", "b_O"):
            assert torch.equal(getattr(hw, name)(layer), getattr(fresh, name)(layer))
    assert hw.unembedding().data_ptr() == model.get_output_embeddings().weight.data_ptr()


def test_fold_changes_only_the_head_weights(hw: HeadWeights) -> None:
    """The folded view shares the source: E, U (no copy), E_in, dimensions are the same; W_V and
    W_O differ (the norm weights are not ones); the view is made once, and it stays folded
    (`ignore` adds no norm, `fold` is not applied twice), so an analysis given it with the
    default settings reads the folded map; its `base` is the plain weights."""
    folded = hw.with_norms("fold")
    assert isinstance(folded, NormFolded) and folded.norms == "fold"
    assert hw.with_norms("fold") is folded and folded.with_norms("fold") is folded
    assert folded.with_norms("ignore") is folded and folded.base is hw
    assert folded.describe() == hw.describe() and folded.source is hw.source
    assert folded.unembedding().data_ptr() == hw.unembedding().data_ptr()
    assert torch.equal(folded.embedding(), hw.embedding())
    E = hw.embed(TOKENS)
    assert torch.equal(folded.mlp0(E), hw.mlp0(E))
    for layer in range(hw.n_layers):
        assert folded.W_V(layer).shape == hw.W_V(layer).shape
        assert folded.W_O(layer).shape == hw.W_O(layer).shape
        assert not torch.allclose(folded.W_V(layer), hw.W_V(layer))
        assert not torch.allclose(folded.W_O(layer), hw.W_O(layer))


def test_fold_formulas(arch: str, hw: HeadWeights) -> None:
    """The folds as written in NormFolded's docstring, with the norm weights read from the modules
    (Gemma's RMSNorm multiplies by 1 + weight)."""
    folded, d = hw.with_norms("fold"), hw.d_model
    gemma, layer_norm = (
        arch.startswith("gemma"),
        arch in {"gpt2", "gpt_neox", "gpt_neox_sequential", "phi"},
    )
    assert hw.family.layer_norm == layer_norm
    C = torch.eye(d, dtype=torch.float64) - 1.0 / d if layer_norm else torch.eye(d).double()
    final = hw.final_norm_module()
    w_f = final.weight + 1 if gemma else final.weight
    for layer in range(hw.n_layers):
        norm_in = hw.source.module(hw.attn_norm_path(layer))
        assert isinstance(norm_in, nn.LayerNorm) == layer_norm
        w_in = norm_in.weight + 1 if gemma else norm_in.weight
        assert_close(folded.W_V(layer), C @ torch.diag(w_in) @ hw.W_V(layer))
        post = hw.attention_out_norm_module(layer)
        w_post = torch.ones(d).double() if post is None else post.weight + 1
        assert (post is not None) == gemma
        right = torch.diag(w_post) @ C @ torch.diag(w_f)
        assert_close(folded.W_O(layer), hw.W_O(layer) @ right)
        assert_close(folded.b_O(layer), hw.b_O(layer) @ right)
        beta = norm_in.bias if layer_norm else torch.zeros(d).double()
        assert_close(
            folded.b_V(layer), hw.b_V(layer) + torch.einsum("d,gde->ge", beta, hw.W_V(layer))
        )


def _relation(vocab: int, n: int, seed: int) -> TokenizedRelation:
    """A relation over random token ids (tiny models have no words)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (n,), generator=g).tolist()
    dst = torch.randint(3, vocab, (n,), generator=g).tolist()
    pairs = tuple((str(s), str(t)) for s, t in zip(src, dst, strict=True))
    rel = Relation(f"r{seed}", pairs, "custom", f"r{seed}", False, "<synthetic>", "0")
    return TokenizedRelation(rel, pairs, tuple(src), tuple(dst))


def test_relation_scores_read_the_folded_map(arch: str, hw: HeadWeights) -> None:
    """The relation map, unchanged, folds by its settings or by the weights it is given, alike;
    and the folded table is not the plain one."""
    rels = [_relation(hw.vocab_size, 60, seed) for seed in range(3)]
    settings = MapSettings(k=3, min_pairs=1)
    plain = relation_scores(hw, rels, settings=settings, sample_stride=4)
    by_settings = relation_scores(hw, rels, settings=settings.but(norms="fold"), sample_stride=4)
    by_weights = relation_scores(hw.with_norms("fold"), rels, settings=settings, sample_stride=4)
    assert by_weights.equals(by_settings)
    assert not by_settings["score"].equals(plain["score"])


# -- 3. weights only --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    """arch -> a sharded float32 safetensors checkpoint of the tiny model."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            folder = tmp_path_factory.mktemp(arch)
            build(tiny_config(arch), torch.float32).save_pretrained(folder, max_shard_size="40KB")
            cache[arch] = folder
        return cache[arch]

    return get


def test_weights_only_folds_the_same(arch: str, saved) -> None:
    """The checkpoint read tensor by tensor (what load_weights builds; tiny models have no
    tokenizer, so CheckpointSource directly) gives the model's folded tensors, bit for bit: the
    same float32 numbers through the same operations."""
    folder = saved(arch)
    full = HeadWeights(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval())
    streamed = HeadWeights(CheckpointSource.open(folder))
    a, b = full.with_norms("fold"), streamed.with_norms("fold")
    for layer in range(full.n_layers):
        for name in ("W_V", "b_V", "W_O", "b_O"):
            x, y = getattr(a, name)(layer), getattr(b, name)(layer)
            assert y.dtype == torch.float32 and torch.equal(x, y), (name, layer)
    assert torch.equal(b.unembedding(), a.unembedding())


def test_weights_only_reads_each_norm_once(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding reads each norm weight it needs once (one d-vector), however often W_V and W_O are
    asked for, and no other norm; `ignore` reads none."""
    reads: list[str] = []
    original = SafetensorsStore.read

    def spy(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(SafetensorsStore, "read", spy)
    hw = HeadWeights(CheckpointSource.open(saved("llama")))
    hw.W_V(1), hw.W_O(1)
    assert not [r for r in reads if "norm" in r]
    folded = hw.with_norms("fold")
    for _ in range(3):
        folded.W_V(1), folded.b_V(1), folded.W_O(1), folded.b_O(1)
    norms = [r for r in reads if "norm" in r]
    assert sorted(norms) == ["model.layers.1.input_layernorm.weight", "model.norm.weight"]


# -- 4. values --------------------------------------------------------------------------------------
def test_unknown_norms_value_is_refused() -> None:
    hw = HeadWeights(tiny_model(ARCHS[0]))
    assert NORMS == ("ignore", "fold")
    for bad in ("folded", "", "IGNORE"):
        with pytest.raises(BadArgument, match="ignore, fold"):
            hw.with_norms(bad)
        with pytest.raises(BadArgument, match="ignore, fold"):
            hw.with_norms("fold").with_norms(bad)
