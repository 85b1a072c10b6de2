"""The book: papermill per chapter and model, `_toc.yml`, jupyter-book (build), and the setup
every chapter opens with (display). The top of the package: nothing imports it.
"""
