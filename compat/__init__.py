"""The compatibility corpus and its checker: ``python compat/run.py`` (see run.py)."""
