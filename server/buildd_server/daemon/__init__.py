"""The process: ``buildd-server`` flags into a ``Config`` (``flags.py``, ``cli.py``), its
lifecycle (``daemon.py``), its state folder (``statedir.py``) and address (``listening.py``),
logging (``logs.py``) and server reflection (``reflection.py``). Everything else is assembled
here.
"""
