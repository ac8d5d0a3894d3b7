"""Generated protobuf and gRPC code for ``buildd.v1``; regenerate with ``python tools/gen_proto.py``."""
