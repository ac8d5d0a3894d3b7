"""Running code in an environment's interpreter: contained processes (``processes.py``,
``containment.py``, ``sandbox.py``), the fork servers (``zygotes.py``, ``zygote.py``, run as
the script ``_zygote_main.py``) and the PEP 517 hooks (``hooks.py``).

Environments are only named in type hints here: the layer above (``environments/``) uses these
to install and to stop fork servers.
"""
