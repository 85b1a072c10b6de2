"""Offloading (foundation.offload): SmolLM2 placed partly on disk by accelerate gives the behaviour
experiments the whole model's numbers, with MAPS's weights read from its checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from mapslib.behaviour.direct_effect import direct_effects, ioi_states
from mapslib.behaviour.ioi import ioi_prompts, load_ioi_data, locate, single_token_names
from mapslib.errors import BadArgument
from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.checkpoint import model_tensors, write_checkpoint
from mapslib.foundation.hooks import ablate_last, extend, keep_masks, removal_tensor
from mapslib.foundation.models import load_model
from mapslib.foundation.offload import OffloadedSource, parse_max_memory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, smollm2):
    """SmolLM2 as a float32 safetensors checkpoint in shards of 200 MB, with its tokenizer."""
    out = tmp_path_factory.mktemp("smollm2-safetensors")
    tensors = model_tensors(smollm2.model)
    write_checkpoint(out, tensors, smollm2.model.config, max_shard_bytes=200 << 20)
    smollm2.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def offloaded(folder, tmp_path_factory: pytest.TempPathFactory):
    """The checkpoint loaded within 200 MB of CPU memory: embeddings and the first layers in memory,
    the rest on disk."""
    return load_model(
        str(folder), max_memory={"cpu": "200MB"}, offload_folder=tmp_path_factory.mktemp("off")
    )


def test_layers_go_to_disk_and_weights_come_from_the_checkpoint(smollm2, offloaded):
    """accelerate put some layers on disk (meta tensors in the model); MAPS reads W_VO and U from the
    checkpoint, equal to the whole model's (float32 written and read back: exact)."""
    assert isinstance(offloaded.weights, OffloadedSource)
    assert {"cpu", "disk"} <= set(offloaded.extra["offload"]["placement"])
    whole, off = HeadWeights(smollm2.model), offloaded.hw
    for layer in (0, off.n_layers - 1):
        assert torch.equal(off.W_VO(layer, 3), whole.W_VO(layer, 3))
    assert torch.equal(off.unembedding(), whole.unembedding())


def _assert_matches_whole(smollm2, offloaded, atol: float) -> None:
    """IOI direct effects and a head-ablated forward pass of `offloaded` against the whole model's."""
    tok = smollm2.tokenizer
    prompts = ioi_prompts(load_ioi_data(), single_token_names(tok, load_ioi_data().names), 8, 0)
    located, _ = locate(tok, prompts)
    whole, off = HeadWeights(smollm2.model), offloaded.hw
    expected = direct_effects(whole, ioi_states(whole, located))
    got = direct_effects(off, ioi_states(off, located)).cpu()
    assert_close(got, expected, rtol=0, atol=atol)

    ids = torch.tensor([located[0].ids])
    removed = [[(off.n_layers - 1, 0), (off.n_layers // 2, 2)]]
    logits = []
    for hw in (whole, off):
        with ablate_last(hw, keep_masks(removal_tensor(hw, removed))):
            logits.append(extend(hw.model, ids.to(hw.device), None, True)[0].cpu())
    plain = extend(whole.model, ids, None, True)[0]
    assert (logits[0] - plain).abs().max() > 1e-3  # the ablation changed something
    assert_close(logits[1], logits[0], rtol=0, atol=atol)


def test_direct_effects_and_ablation_match_the_whole_model(smollm2, offloaded):
    """The IOI direct effects and a head-ablated forward pass agree with the whole model's.

    Tolerance: the same float32 weights and the same ops on the same device; accelerate only moves
    tensors in and out, so any difference is float32 rounding from a different kernel path, far
    below 1e-4 of logits that are O(10)."""
    _assert_matches_whole(smollm2, offloaded, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloading_onto_a_gpu_matches_the_whole_cpu_model(smollm2, folder, tmp_path):
    """Layers on the GPU, in CPU memory and on disk (accelerate runs them all on the GPU): MAPS's
    tensors come to the GPU from the checkpoint, and the numbers are the whole CPU model's.

    Tolerance: float32 on both sides, but the GPU's kernels sum in other orders than the CPU's; over
    30 layers that is ~1e-5 relative on logits of O(10), so 1e-3 leaves a margin of ten."""
    off = load_model(
        str(folder), max_memory={0: "150MB", "cpu": "150MB"}, offload_folder=tmp_path / "off"
    )
    assert {"0", "cpu", "disk"} <= set(off.extra["offload"]["placement"])
    assert off.hw.device.type == "cuda" and off.hw.unembedding().is_cuda
    _assert_matches_whole(smollm2, off, atol=1e-3)


def test_bad_offload_arguments_name_the_fix(folder, tmp_path):
    """A GGUF model, a missing offload folder and a malformed budget: one clear error each."""
    with pytest.raises(BadArgument, match="safetensors"):
        load_model("smollm2-135m", max_memory={"cpu": "1GiB"}, offload_folder=tmp_path)
    with pytest.raises(BadArgument, match="--offload-folder"):
        load_model(str(folder), max_memory={"cpu": "1GiB"})
    for spec in ("2GiB", "gpu=2GiB", "cpu=lots", ""):
        with pytest.raises(BadArgument, match="max-memory"):
            parse_max_memory(spec)
    assert parse_max_memory("cpu=8GiB") == {"cpu": "8GiB"}
