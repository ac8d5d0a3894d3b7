"""Regenerate the Python code for ``proto/buildd/v1/buildd.proto``.

Usage: ``python tools/gen_proto.py [--out DIR]`` (needs the ``dev`` extra).
Without ``--out`` the files next to the ``.proto`` are rewritten; the test
``tests/unit/test_proto_drift.py`` regenerates into a temporary folder and
fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "buildd/v1/buildd.proto"
GENERATED = ("buildd_pb2.py", "buildd_pb2.pyi", "buildd_pb2_grpc.py", "buildd_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")
    return exe


def generate(out: Path) -> list[Path]:
    """Write the generated modules for buildd/v1 under ``out`` and return their paths."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        PROTO_FILE,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [out / "buildd" / "v1" / name for name in GENERATED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="output root (default: proto/)"
    )
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))


if __name__ == "__main__":
    main()
