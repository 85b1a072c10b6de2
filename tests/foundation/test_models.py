"""Model loading: spec resolution, clear errors, the dequantised-weights cache, devices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mapslib.errors import BadArgument, UnknownModel
from mapslib.foundation.models import (
    ALIASES,
    _quantization_from_name,
    load_model,
    model_slug,
    resolve_device,
)


def test_slugs_are_folder_safe() -> None:
    assert model_slug("smollm2-135m") == "smollm2-135m"
    assert model_slug("/x/y/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m-instruct.q4_1"
    assert model_slug("meta-llama/Llama-3.1-8B") == "meta-llama-llama-3.1-8b"


def test_quantization_is_read_from_gguf_names() -> None:
    assert _quantization_from_name(Path("SmolLM2-135M-Instruct.Q4_1.gguf")).startswith("GGUF Q4_1")
    assert _quantization_from_name(Path("gemma-3-270m-q4_k_m.gguf")).startswith("GGUF Q4_K_M")


def test_bad_specs_fail_fast_and_clearly(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="GGUF file not found"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(UnknownModel, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(UnknownModel, match="not a valid model name"):
        load_model("a b c")
    with pytest.raises(UnknownModel, match="smollm2-135m"):
        load_model("surely-not-a-model-here")


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadArgument):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadArgument, match="no CUDA device"):
            resolve_device("cuda")


def test_local_folder_loads_and_is_fingerprinted(tmp_path: Path, smollm2) -> None:
    """A transformers folder (here: a tiny Llama with SmolLM2's tokenizer) loads as `local`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=49152,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    smollm2.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.source == "local" and loaded.revision.startswith("sha256:")
    assert loaded.info()["model_type"] == "llama" and not loaded.model.training


@pytest.mark.slow
def test_gguf_cache_gives_identical_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First load dequantises and caches; the second reads the cache; the weights are bit-identical."""
    monkeypatch.setenv("MAPSLIB_CACHE", str(tmp_path))
    cold = load_model("smollm2-135m")
    cached = list((tmp_path / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    assert not [
        p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")
    ]  # no temp folder left
    warm = load_model("smollm2-135m")
    assert cold.revision == warm.revision and cold.revision.startswith("sha256:")
    for (name, a), (_, b) in zip(
        cold.model.state_dict().items(), warm.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    ids = cold.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert ids == warm.tokenizer(" Paris", add_special_tokens=False)["input_ids"] and len(ids) == 1


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2) -> None:
    """The default model is the real pretrained one: it knows the capital of France."""
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        next_id = smollm2.model(**ids).logits[0, -1].argmax().item()
    assert tok.decode([next_id]).strip() == "Paris"


def test_aliases_point_at_installed_packages() -> None:
    for alias, pkg in ALIASES.items():
        path = pkg.path()
        assert path.suffix == ".gguf" and path.is_file() and os.path.getsize(path) > 50_000_000, (
            alias
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scores_agree_on_cuda(smollm2) -> None:
    """The same code on CUDA gives the CPU scores (this machine has no GPU: skipped here)."""
    from mapslib.foundation.adapters import HeadWeights
    from mapslib.relation_map.relations import load_relations, scorable
    from mapslib.relation_map.scores import relation_scores

    rels = scorable(load_relations(["names", "capital"]), smollm2.tokenizer)
    cpu = relation_scores(HeadWeights(smollm2.model), rels, layers=[23])
    gpu_model = load_model("smollm2-135m", device="cuda")
    gpu = relation_scores(HeadWeights(gpu_model.model), rels, layers=[23])
    assert (cpu["score"] - gpu["score"]).abs().max() <= 1 / 39  # at most one pair flips on rounding
