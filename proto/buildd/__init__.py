"""buildd: the wire contract (generated code lives in ``buildd.v1``)."""

__version__ = "0.1.0"
