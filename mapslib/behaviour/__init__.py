"""Checking the static map against the model's behaviour.

correlation (static scores against head outputs in a forward pass), ablation (removing relation
heads from task prompts), multitoken (sources that span several tokens).
"""
