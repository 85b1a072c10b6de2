"""The report layer: what the book shows. Nothing below this package imports it.

reference (the paper's quoted numbers), tables (our results beside the paper's), plots, display
(notebook setup and token display), book (papermill and jupyter-book).
"""
