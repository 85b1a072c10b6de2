"""What one model's chapters show: the paper's quoted numbers (reference), our results beside them
(tables) and the figures (plots, plots_salient, plots_behaviour, plots_known_heads). Nothing in the
method packages imports it.
"""
