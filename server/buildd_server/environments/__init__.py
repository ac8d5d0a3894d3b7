"""Build environments: the interpreter (``interpreters.py``, ``interpreter_discovery.py``), the
key (``keys.py``), making one (``venvs.py``, ``installers.py``, ``environments.py``), its marker
and digest (``markers.py``, ``manifest.py``) and its bytecode (``bytecode.py``, run as the
script ``_bytecode_main.py``).
"""
