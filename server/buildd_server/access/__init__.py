"""Who may call and reach the daemon: tokens and principals (``auth.py``), the socket's and
state folder's permissions (``access.py``), the session routing header (``routing.py``).
"""
