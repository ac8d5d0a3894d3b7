"""The process: ``buildd-server`` flags into a ``Config`` (``cli.py``), its lifecycle
(``daemon.py``), logging (``logs.py``) and server reflection (``reflection.py``). Everything
else is assembled here.
"""
