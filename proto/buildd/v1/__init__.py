"""Generated protobuf and gRPC code for ``buildd.v1``.

Regenerate with ``python tools/gen_proto.py``.
"""
