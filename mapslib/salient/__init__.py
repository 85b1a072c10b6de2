"""Pillar (b): a head's most salient operations, read from its weights and described.

saliency (which tokens a head acts on), mappings (what it maps them to), describe (an LLM's reading),
labeller (rule-based detectors that need no LLM), globality (global versus specific heads).
"""
