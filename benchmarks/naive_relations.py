"""The naive relation map, for comparison only: per head the d x d W_VO, per relation E_src W_VO U, topk.

Same inputs and output format as `python -m mapslib relations` (all shipped relations, all layers,
PROTOCOL.md's k and paper embeddings), so the benchmark can check the two agree before timing them.
Usage: python benchmarks/naive_relations.py MODEL OUT.csv [DEVICE]
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from mapslib.foundation.adapters import HeadWeights
from mapslib.foundation.embeddings import InputEmbeddings
from mapslib.foundation.models import load_model
from mapslib.relation_map.relations import load_relations, scorable
from mapslib.relation_map.scores import SCORE_COLUMNS, relation_k


def naive_scores(hw: HeadWeights, relations: list) -> pd.DataFrame:
    """Every head, every relation, the textbook way."""
    U = hw.unembedding()
    inputs = {r.name: InputEmbeddings(hw, torch.tensor(r.src_ids), "paper") for r in relations}
    rows = []
    for layer in range(hw.n_layers):
        for head in range(hw.n_heads):
            w_vo = hw.W_VO(layer, head)  # d x d
            for r in relations:
                M = inputs[r.name].for_layer(layer) @ w_vo @ U  # n x |V|
                k = relation_k(r, hw.vocab_size)
                dst = torch.tensor(r.dst_ids, device=M.device)[:, None]
                for mode, sign in (("promote", 1), ("suppress", -1)):
                    hit = (
                        (torch.topk(sign * M, k, dim=1).indices == dst).any(1).float().mean().item()
                    )
                    rows.append((layer, head, r.name, mode, k, len(r), round(hit, 6)))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


if __name__ == "__main__":
    model, out = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    loaded = load_model(model, device=device)
    rels = scorable(load_relations(), loaded.tokenizer, log=lambda _: None)
    with torch.inference_mode():
        naive_scores(HeadWeights(loaded.model), rels).to_csv(out, index=False)
