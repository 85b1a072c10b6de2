"""Across models: reading every model's part of the book (parts), the cross-model tables
(universality, universality_behaviour), the paper's claims checked on each model (claim_rules,
claims) and their figures (plots). Only the book imports it.
"""
