"""The gRPC layer: the buildd.v1 servicer on ``grpc.aio`` and what it needs.

Every RPC is a coroutine on the daemon's event loop, so an idle stream (a
KeepAlive, a stalled upload, a slow download reader, a watch) costs a
coroutine, never a thread. The blocking service logic stays threaded: long
calls run the service in a worker thread of their own whose events reach the
stream through a bounded bridge (``streams.py``); the blocking part of a
unary call or of one upload/download chunk runs in a bounded executor.

| module | what it does |
|---|---|
| ``servicer.py`` | the RPC methods: translate, never decide |
| ``longcalls.py`` | a long call: checks, its worker thread, its events, its end |
| ``streams.py`` | thread to loop: the bounded bridge, call counts, the loop's thread |
| ``decode.py`` | request decoding, field checks (lengths, NUL, control characters) |
| ``encode.py`` | service events and outcomes into wire messages |
| ``limits.py`` | per-principal caps and per-RPC message size limits |
| ``failures.py`` | errors onto the wire: the ``Failure`` event and the gRPC status |
| ``status.py`` | the ``GetStatus`` answer |
| ``store_status.py`` | the store's status entries and ``PruneStore`` |
| ``transfers.py`` | ``FindMissingBlobs``, ``UploadBlob``, ``DownloadArtifact`` |
"""
