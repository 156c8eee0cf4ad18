"""Generate the Python gRPC stubs from `proto/` into `shared/rpc/` (run by `make proto`).

The stubs are committed; `tests/repo/test_proto.py` regenerates them into a temporary folder
and fails when the committed copy is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "shared.rpc"


def generate(out_dir: Path) -> list[Path]:
    """Write the stubs for every .proto under `proto/` into `out_dir`; return the files."""
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written: list[Path] = []
    for proto in protos:
        folder = out_dir / Path(proto).parent
        # protoc emits absolute imports rooted at proto/; root them at our package instead.
        for generated in folder.glob("*_pb2*.py*"):
            text = generated.read_text()
            fixed = re.sub(
                r"^from (distance\.\S+) import", rf"from {PACKAGE}.\1 import", text, flags=re.M
            )
            generated.write_text(fixed)
            written.append(generated)
        parts = Path(proto).parent.parts
        for depth in range(len(parts) + 1):
            (out_dir.joinpath(*parts[:depth]) / "__init__.py").touch()
    return sorted(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "shared" / "rpc")
    for path in generate(parser.parse_args().out):
        sys.stdout.write(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}\n")


if __name__ == "__main__":
    main()
