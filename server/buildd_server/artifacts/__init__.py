"""What a backend produced: checked (``checks.py``) before it counts, then published into the
output folder (``artifacts.py``).
"""
