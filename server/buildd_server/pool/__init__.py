"""Instances leased exclusively: the generic keyed pool (``pool.py``, ``dispatch.py``,
``leases.py``; it knows nothing of environments) and the principal's store on disk with its
policy (``store.py``, ``storekeeper.py``).
"""
