"""Regenerate custos/v1/*_pb2*.py from proto/custos/v1/*.proto.

Run: python -m custos.tools.genproto [--check]
--check regenerates into a temp dir and exits 1 if the committed code differs.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_PACKAGE = ROOT / "custos" / "v1"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # optional: a dev dependency (grpcio-tools, pinned)

    protos = sorted((PROTO_DIR / "custos" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "custos" / "v1").glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        names = {p.name for p in produced}
        if ns.check:
            committed = {p.name for p in OUT_PACKAGE.glob("*_pb2*")}
            bad = sorted(names ^ committed)
            bad += [
                n for n in sorted(names & committed)
                if not filecmp.cmp(Path(tmp) / "custos" / "v1" / n, OUT_PACKAGE / n, shallow=False)
            ]
            if bad:
                print("generated code is stale: " + ", ".join(bad), file=sys.stderr)
                return 1
            return 0
        for stale in OUT_PACKAGE.glob("*_pb2*"):
            stale.unlink()
        for p in produced:
            shutil.copy(p, OUT_PACKAGE / p.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
