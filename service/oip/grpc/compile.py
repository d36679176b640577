"""Compile inference.proto into Python modules beside it, with grpcio-tools.

    python -m service.oip.grpc.compile

The build runs it (Makefile `install`, the Dockerfile); `stubs()` runs it too when the
modules are missing or older than the proto, so a checkout that skipped it still serves.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROTO = HERE / "inference.proto"
OUTPUTS = (HERE / "inference_pb2.py", HERE / "inference_pb2_grpc.py")


class ProtoCompileError(RuntimeError):
    """grpcio-tools is missing or protoc failed."""


def compile_proto() -> None:
    """Run protoc (from grpcio-tools) on inference.proto, writing the modules beside it."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ProtoCompileError("grpcio-tools is not installed: pip install grpcio-tools") from exc
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{HERE}", f"--python_out={HERE}", f"--grpc_python_out={HERE}", str(PROTO)]
    )
    if code != 0:
        raise ProtoCompileError(f"protoc failed on {PROTO} (exit {code})")
    # The generated service module imports `inference_pb2` as a top-level module; make it
    # a package-relative import so the modules work from inside the package.
    grpc_module = OUTPUTS[1]
    text = grpc_module.read_text()
    grpc_module.write_text(text.replace("import inference_pb2 as", "from . import inference_pb2 as"))


def stubs() -> tuple[ModuleType, ModuleType]:
    """(messages, service stubs): compiled first when missing or stale."""
    stale = any(not p.exists() or p.stat().st_mtime < PROTO.stat().st_mtime for p in OUTPUTS)
    if stale:
        compile_proto()
        importlib.invalidate_caches()
    messages = importlib.import_module(f"{__package__}.inference_pb2")
    service = importlib.import_module(f"{__package__}.inference_pb2_grpc")
    return messages, service


if __name__ == "__main__":
    compile_proto()
    print(f"compiled {PROTO.name} -> {', '.join(p.name for p in OUTPUTS)}", file=sys.stderr)
