"""Weights only: a checkpoint read tensor by tensor gives the full model's weights and scores, bit for bit.

Every tiny architecture is saved as a sharded safetensors checkpoint, in float32 and in bf16, and
read back two ways: the full model (`from_pretrained`, float32, as `load_model` loads it) and
`CheckpointSource`. Why equality is exact, not within a tolerance:
* float32 checkpoints: both read the same float32 numbers;
* bf16 (and fp16) checkpoints: every bf16 number is a float32 number (same exponent range, the
  mantissa padded with zeros), so the upcast is exact, whether transformers does it at load, the
  model is loaded in bf16 and then `.float()`-ed, or the checkpoint source upcasts per tensor;
* GGUF files: both dequantise each tensor with gguf's `dequantize` to float32 and apply the same
  transformers processor.
With equal weights, the analyses run the same operations in the same order on equal tensors of
the same shapes and strides (the source returns contiguous tensors in the model's layout), so the
scores are equal too; the tests check equality (`torch.equal`, `DataFrame.equals`), never closeness.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import build, tiny_config
from transformers import AutoModelForCausalLM

from mapslib.errors import BadArgument, UnknownModel
from mapslib.foundation import checkpoint
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.cache import params_key
from mapslib.foundation.checkpoint import (
    CheckpointSource,
    SafetensorsStore,
    model_tensors,
    write_checkpoint,
)
from mapslib.foundation.settings import MapSettings
from mapslib.relation_map.baseline import random_scores
from mapslib.relation_map.relations import Relation, TokenizedRelation
from mapslib.relation_map.scores import relation_scores
from mapslib.salient.globality import head_targets
from mapslib.salient.saliency import saliency_scores

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def relation(name: str, vocab: int, n: int, seed: int) -> TokenizedRelation:
    """A relation over random token ids (tiny models have no words)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, vocab, (n,), generator=g).tolist()
    dst = torch.randint(3, vocab, (n,), generator=g).tolist()
    pairs = tuple((str(s), str(t)) for s, t in zip(src, dst, strict=True))
    rel = Relation(name, pairs, "custom", name, False, "<synthetic>", "0")
    return TokenizedRelation(rel, pairs, tuple(src), tuple(dst))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    """(arch, dtype name) -> a sharded checkpoint of the tiny model built in that dtype."""
    cache: dict[tuple[str, str], Path] = {}

    def get(arch: str, dtype: str) -> Path:
        if (arch, dtype) not in cache:
            folder = tmp_path_factory.mktemp(f"{arch}-{dtype}")
            build(tiny_config(arch), DTYPES[dtype]).save_pretrained(folder, max_shard_size="40KB")
            cache[arch, dtype] = folder
        return cache[arch, dtype]

    return get


def full_model(folder: Path, dtype: torch.dtype = torch.float32) -> HeadWeights:
    """The full-model path: the model built and loaded in `dtype`, then (if narrower) upcast."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    return HeadWeights(model.float())


def assert_same_weights(full: HeadWeights, streamed: HeadWeights, scale: bool = True) -> None:
    """Every tensor MAPS reads, bit for bit (with `scale` False, E before its scale)."""
    assert streamed.describe() | {"embedding scale": 0} == full.describe() | {"embedding scale": 0}
    for layer in range(full.n_layers):
        for name in ("W_V", "b_V", "W_O", "b_O"):
            a, b = getattr(full, name)(layer), getattr(streamed, name)(layer)
            assert b.dtype == torch.float32 and torch.equal(a, b), (name, layer)
    raw = full.source.get(full.embed_path)
    assert torch.equal(streamed.source.get(streamed.embed_path), raw)
    assert torch.equal(streamed.unembedding(), full.unembedding())
    assert torch.equal(streamed.mlp0(raw), full.mlp0(raw))
    assert streamed.biases() == full.biases()
    if scale:
        assert streamed.embed_scale == full.embed_scale
        E = full.embedding()
        assert torch.equal(streamed.embedding(), E)
        ids = torch.tensor([5, 0, 77, 5, full.vocab_size - 1])
        assert torch.equal(streamed.embed(ids), full.embed(ids))
        assert torch.equal(streamed.mlp0(E), full.mlp0(E))  # E_in of `paper`, all the vocabulary


# -- 1. the weights -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_weights_are_the_full_models(arch: str, dtype: str, saved) -> None:
    """W_V, b_V, W_O, b_O of every layer, E, U, rows of E, E_in, scale: equal to the full model's."""
    folder = saved(arch, dtype)
    shards = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) >= 2  # really sharded
    streamed = HeadWeights(CheckpointSource.open(folder))
    assert_same_weights(full_model(folder), streamed)
    if dtype == "bf16":  # also against the model loaded in bf16 and upcast afterwards
        upcast = full_model(folder, torch.bfloat16)
        # Gemma's embedding scale is a buffer made in the dtype the model is built in: built in bf16,
        # sqrt(d) is rounded to bf16 and stays so after .float(); load_model (float32) and the
        # checkpoint source use sqrt(d) in float32. Every tensor is the same.
        gemma = arch.startswith("gemma")
        assert_same_weights(upcast, streamed, scale=not gemma)
        if gemma:
            rounded = float(torch.tensor(upcast.d_model**0.5, dtype=torch.bfloat16))
            assert upcast.embed_scale == rounded != streamed.embed_scale


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_blockwise_reads_give_the_same_tensors(
    arch: str, saved, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large tensors are read and converted in blocks of rows: with blocks of a few rows, the same."""
    monkeypatch.setattr(checkpoint, "READ_BLOCK_BYTES", 1000)  # 7 or 5 rows of d = 32 or 48
    folder = saved(arch, "bf16")
    streamed = HeadWeights(CheckpointSource.open(folder))
    assert streamed.source._block_rows(streamed.embed_path) < 10
    assert_same_weights(full_model(folder), streamed)


# -- 2. the scores ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_static_analyses_give_the_full_models_numbers(arch: str, dtype: str, saved) -> None:
    """Relation scores (every embedding mode), saliency, argmax targets and the random baseline."""
    folder = saved(arch, dtype)
    full, streamed = full_model(folder), HeadWeights(CheckpointSource.open(folder))
    rels = [relation("a", full.vocab_size, 40, 0), relation("b", full.vocab_size, 30, 1)]
    for embedding in ("paper", "raw", "mlp0-residual"):
        kw = dict(settings=MapSettings(k=5, embedding=embedding), sample_stride=4)
        want = relation_scores(full, rels, **kw)
        assert relation_scores(streamed, rels, **kw).equals(want), embedding
    want = relation_scores(
        full, rels, settings=MapSettings(k=5, bias="value+output"), sample_stride=4
    )
    assert relation_scores(
        streamed, rels, settings=MapSettings(k=5, bias="value+output"), sample_stride=4
    ).equals(want)
    assert torch.equal(saliency_scores(streamed), saliency_scores(full))
    assert torch.equal(head_targets(streamed), head_targets(full))
    assert random_scores(streamed, rels, settings=MapSettings(k=5)).equals(
        random_scores(full, rels, settings=MapSettings(k=5))
    )


# -- 3. only what MAPS needs, layer by layer --------------------------------------------------------
def test_reads_only_what_maps_needs_in_order(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring layer 1 reads E's rows, the first block's MLP and norm, then U, then layer 1's V and O:
    never q, k, another layer, or the final norm; the MLP is read before U (it is dropped by then)."""
    folder = saved("llama", "bf16")
    reads: list[str] = []
    for method in ("read", "read_rows"):
        original = getattr(SafetensorsStore, method)

        def spy(self, key, *args, _original=original):
            reads.append(key)
            return _original(self, key, *args)

        monkeypatch.setattr(SafetensorsStore, method, spy)
    hw = HeadWeights(CheckpointSource.open(folder))
    relation_scores(
        hw, [relation("a", hw.vocab_size, 40, 0)], layers=[1], settings=MapSettings(k=5)
    )
    layer0 = {f"model.layers.0.{m}" for m in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    layer0 |= {"model.layers.0.post_attention_layernorm"}
    layer1 = {"model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj"}
    modules = [r.rsplit(".", 1)[0] for r in reads]
    assert set(modules) == {"model.embed_tokens", "lm_head"} | layer0 | layer1
    first = {m: modules.index(m) for m in set(modules)}
    assert max(first[m] for m in layer0) < first["lm_head"] < min(first[m] for m in layer1)
    assert modules.count("lm_head") == 1  # U is read once and kept


def test_unembedding_is_kept_once_and_in_the_dtype_the_kernels_take(saved) -> None:
    """U is read once; held in bf16 only where the kernels upcast it per column block."""
    folder = saved("llama", "bf16")
    source = CheckpointSource.open(folder)
    hw = HeadWeights(source)
    U = hw.unembedding(stored=True)
    assert U.dtype == torch.bfloat16
    assert hw.unembedding(stored=True).data_ptr() == U.data_ptr()  # kept, not read again
    assert hw.unembedding().dtype == torch.float32  # what any other caller gets
    assert source.describe(hw.unembed_path)["unembedding_dtype"] == str(U.dtype).split(".")[1]


# -- 4. names: tying, renamings, errors -------------------------------------------------------------
def test_tied_weights_are_found_under_either_name(tmp_path: Path) -> None:
    """A tied checkpoint may hold E under `lm_head.weight` only (safetensors' save_model, as
    mapslib's GGUF cache does): E and U are both read from it."""
    model = build(tiny_config("gemma3"), torch.float32)
    assert model.config.tie_word_embeddings
    tensors = [
        ("lm_head.weight" if name == "model.embed_tokens.weight" else name, t)
        for name, t in model_tensors(model)
    ]
    write_checkpoint(tmp_path, tensors, model.config, max_shard_bytes=50_000)
    streamed = HeadWeights(CheckpointSource.open(tmp_path))
    assert "model.embed_tokens.weight" not in streamed.source.store.keys()
    assert_same_weights(HeadWeights(model), streamed)


def test_renamed_keys_are_read_as_transformers_reads_them(tmp_path: Path) -> None:
    """Old GPT-NeoX checkpoints call the unembedding `embed_out`: transformers' renaming finds it."""
    model = build(tiny_config("gpt_neox"), torch.float32)
    tensors = [(name.replace("lm_head.", "embed_out."), t) for name, t in model_tensors(model)]
    write_checkpoint(tmp_path, tensors, model.config)
    streamed = HeadWeights(CheckpointSource.open(tmp_path))
    assert torch.equal(streamed.unembedding(), HeadWeights(model).unembedding())


def test_a_missing_tensor_is_named(tmp_path: Path) -> None:
    model = build(tiny_config("llama"), torch.float32)
    name = "model.layers.1.self_attn.v_proj.weight"
    write_checkpoint(tmp_path, [(n, t) for n, t in model_tensors(model) if n != name], model.config)
    hw = HeadWeights(CheckpointSource.open(tmp_path))
    hw.W_V(0)
    with pytest.raises(UnknownModel, match=r"no tensor for model\.layers\.1\.self_attn\.v_proj"):
        hw.W_V(1)


def test_module_accessors_need_the_model(saved) -> None:
    """Hooks and forward passes need the model: a weights-only HeadWeights says so."""
    hw = HeadWeights(CheckpointSource.open(saved("llama", "fp32")))
    for access in (lambda: hw.model, lambda: hw.attention(0), lambda: hw.embedding_module):
        with pytest.raises(BadArgument, match="load_model"):
            access()


def test_module_source_reads_the_family_paths(model, hw: HeadWeights) -> None:
    """The paths HeadWeights names tensors by are the model's own modules (so, its checkpoint's)."""
    assert hw.source.get(hw.unembed_path) is not None
    assert torch.equal(hw.unembedding(), model.get_output_embeddings().weight.T)
    assert hw.embedding_module is model.get_input_embeddings()
    names = dict(model.named_parameters())
    assert f"{hw.value_path(1)}.weight" in names and f"{hw.out_proj_path(1)}.weight" in names


# -- 5. sidecars --------------------------------------------------------------------------------------
def test_cache_key_ignores_the_loader() -> None:
    """Whole model or weights only: the same weights, so the same cached table serves both."""
    model = {"spec": "m", "revision": "sha256:1", "location": "/a"}
    full = {"model": model, "k": None}
    weights = {"model": model | {"location": "/b", "loader": {"kind": "weights-only"}}, "k": None}
    assert params_key(full) == params_key(weights)


@pytest.mark.slow
def test_load_weights_and_the_cli_on_a_bf16_checkpoint(smollm2, tmp_path: Path) -> None:
    """SmolLM2 written as bf16 shards: `relations --weights-only` writes the full path's table, its
    sidecar records the loader and the peak memory, and either path reuses the other's table."""
    from mapslib.cli import main
    from mapslib.foundation.models import load_model, load_weights
    from mapslib.relation_map.relations import load_relations
    from mapslib.relation_map.scores import run_relation_map

    folder = tmp_path / "smollm2-bf16"
    sd = model_tensors(smollm2.model)
    write_checkpoint(
        folder, sd, smollm2.model.config, max_shard_bytes=64 << 20, dtype=torch.bfloat16
    )
    smollm2.tokenizer.save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) >= 3

    args = ["relations", "--model", str(folder), "--relations", "names", "capital"]
    args += ["--layers", "0,23", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "full.csv")]) == 0
    assert main([*args, "--weights-only", "--out", str(tmp_path / "w.csv")]) == 0
    full, weights = pd.read_csv(tmp_path / "full.csv"), pd.read_csv(tmp_path / "w.csv")
    assert len(full) == 2 * 9 * 2 * 2 and weights.equals(full)
    side = json.loads((tmp_path / "w.csv.json").read_text())
    assert side["params"]["model"]["loader"]["checkpoint_dtype"] == "bfloat16"
    assert side["arguments"]["weights_only"] is True and side["memory"]["peak_rss_gib"] > 0
    full_side = json.loads((tmp_path / "full.csv.json").read_text())
    assert "loader" not in full_side["params"]["model"]
    assert params_key(full_side["params"]) == params_key(side["params"])

    # the library: a table made with the whole model is read, not recomputed, from weights only
    rels = load_relations(["names"])
    lw = load_weights(str(folder))
    assert lw.info()["revision"] == load_model(str(folder)).info()["revision"]
    made = run_relation_map(load_model(str(folder)), rels, tmp_path / "t.csv", layers=[23])
    again = run_relation_map(lw, rels, tmp_path / "t.csv", layers=[23])
    assert again.equals(made) and "loader" not in again.attrs["sidecar"]["params"]["model"]


# -- 6. GGUF ------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_gguf_weights_are_the_full_models(alias: str, smollm2) -> None:
    """Dequantised tensor by tensor from the GGUF file: the weights load_model's transformers path
    gives (Gemma: norms stored as 1 + w, E scaled by sqrt(d)), bit for bit."""
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        get_gguf_hf_weights_map,
    )

    from mapslib.foundation.models import load_model, load_weights

    lm = smollm2 if alias == "smollm2-135m" else load_model(alias)
    lw = load_weights(alias)
    full, streamed = lm.hw, lw.hw
    assert lw.info() | {"loader": None} == lm.info() | {"loader": None}
    assert_same_weights(full, streamed)
    # its name map is transformers' (built once instead of once per submodule)
    store = streamed.source.store
    theirs = get_gguf_hf_weights_map(streamed.source.meta, TENSOR_PROCESSORS[store.arch]({}))
    ours = streamed.source.names
    assert ours == {hf: g for g, hf in theirs.items() if g in store.tensors}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_checkpoint_on_cuda(saved) -> None:
    """On CUDA, the tensors land on the device and equal the full model's there."""
    folder = saved("llama", "bf16")
    full = full_model(folder)
    full.source.model.to("cuda")
    streamed = HeadWeights(CheckpointSource.open(folder, device="cuda"))
    assert streamed.device.type == "cuda"
    assert_same_weights(full, streamed)
