"""The foundation: what every pillar of MAPS stands on.

models (loading), adapters (where each family keeps its weights), embeddings (E_in), heads (the
factored OV circuit of every head), kernels (blocked products over the vocabulary), hooks (reading
and removing heads in a forward pass), tokens (token text), io and cache (atomic, parameter-keyed
results).
"""
