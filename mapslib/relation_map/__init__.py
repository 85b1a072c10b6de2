"""Pillar (a): how strongly every head implements each predefined relation, and its suppression.

relations (the datasets and the single-token filter), scores (the relation map), summary (head-level
readings of it), baseline (random matrices with each layer's statistics).
"""
