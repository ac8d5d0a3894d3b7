"""What a request builds from: the project and its ``[build-system]`` (``sources.py``,
``lint.py``), sdists and uploads unpacked safely (``archives.py``), the blob cache
(``blobs.py``), the tree's fingerprint and its watcher (``fingerprints.py``,
``treewatch.py``; ``inotifyinfo.py`` reads what the kernel says of its inotify instances).

Nothing here knows of environments, hooks or sessions.
"""
