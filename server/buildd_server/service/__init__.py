"""The request flow: sessions (``sessions.py``), requests and what a session remembers per
source (``requests.py``, ``workspace.py``), leasing (``leasing.py``), cached hook answers
(``hookcache.py``), metadata watches (``watches.py``) and ``BuildService``, which runs a
request from source to artifact (``service.py``, with what runs under a lease in ``steps.py``).
"""
