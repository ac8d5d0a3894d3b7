"""Write deploy/kubernetes/31-proxy-config.yaml from deploy/nginx/nginx.conf.

Usage: ``python tools/gen_deploy.py [--check]``. The proxy's ConfigMap carries
the reference nginx configuration byte for byte; edit deploy/nginx/nginx.conf,
then run this. ``--check`` writes nothing and exits 1 when the ConfigMap is
stale (tests/unit/test_deploy.py does the same check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "deploy" / "nginx" / "nginx.conf"
TARGET = ROOT / "deploy" / "kubernetes" / "31-proxy-config.yaml"

HEADER = """\
# Generated from deploy/nginx/nginx.conf by tools/gen_deploy.py: edit that
# file, then run the tool. After applying a change, restart the proxies:
#   kubectl -n buildd rollout restart deployment/buildd-proxy
apiVersion: v1
kind: ConfigMap
metadata:
  name: buildd-proxy
  namespace: buildd
  labels:
    app.kubernetes.io/name: buildd
    app.kubernetes.io/component: proxy
data:
  nginx.conf: |
"""


def render(config: str) -> str:
    lines = [("    " + line) if line else "" for line in config.rstrip("\n").split("\n")]
    return HEADER + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args()
    wanted = render(SOURCE.read_text())
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != wanted:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python tools/gen_deploy.py")
            return 1
        return 0
    TARGET.write_text(wanted)
    print(TARGET.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
