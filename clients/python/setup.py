"""Build script: the gRPC stubs are generated from the repository's `proto/` while the package
is built, so they always match the proto the server was built from.

    pip install ./clients/python        # from the repository root (pip >= 21.3 builds in place)

The proto is found in `$FLOTILLA_PROTO_DIR`, else `../../proto` (a checkout), else `./proto` (an
sdist, which carries a copy). The generated modules go to `flotilla/_proto/` in the wheel only,
never into the source tree. Their import-time version checks need grpcio at least the
grpcio-tools version that generated them and protobuf at least the gencode version (same major),
so those floors become the package's dependencies.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_FILES = ["flotilla.proto"]
# Import path of the generated modules; also their path inside the wheel.
STUB_PACKAGE_DIR = "flotilla/_proto"


def proto_dir() -> Path:
    env = os.environ.get("FLOTILLA_PROTO_DIR")
    candidates = [Path(env)] if env else [HERE.parent.parent / "proto", HERE / "proto"]
    for c in candidates:
        if all((c / f).is_file() for f in PROTO_FILES):
            return c
    raise SystemExit(
        "cannot find "
        + ", ".join(PROTO_FILES)
        + " in "
        + " or ".join(str(c) for c in candidates)
        + " (build from a Flotilla checkout, or set FLOTILLA_PROTO_DIR)"
    )


def generate() -> dict:
    """Runs protoc (from grpcio-tools) and returns {path inside the wheel: bytes}."""
    import grpc_tools
    from grpc_tools import protoc

    src = proto_dir()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        # Mapping proto/ to flotilla/_proto makes the stubs import each other as
        # `from flotilla._proto import ...` instead of as top-level modules.
        args = [
            "grpc_tools.protoc",
            f"-I{STUB_PACKAGE_DIR}={src}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
        ] + [str(src / f) for f in PROTO_FILES]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + str(src))
        files = {}
        for path in sorted(Path(out).rglob("*")):
            if path.is_file():
                files[path.relative_to(out).as_posix()] = path.read_bytes()
    return files


def dependencies(files: dict) -> list:
    """grpcio and protobuf floors read from the generated code's own version checks."""
    grpc_stub = files[f"{STUB_PACKAGE_DIR}/flotilla_pb2_grpc.py"].decode()
    pb = files[f"{STUB_PACKAGE_DIR}/flotilla_pb2.py"].decode()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub)
    gencode = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
        r"(\d+),\s*(\d+),\s*(\d+),",
        pb,
    )
    deps = []
    deps.append(f"grpcio>={grpc_version.group(1)}" if grpc_version else "grpcio")
    if gencode:
        major, minor, patch = (int(x) for x in gencode.groups())
        deps.append(f"protobuf>={major}.{minor}.{patch},<{major + 1}")
    else:
        deps.append("protobuf")
    return deps


GENERATED = generate()


class BuildPyWithStubs(build_py):
    """Adds the generated stubs to the build (or, for an editable install, to src/)."""

    def run(self):
        super().run()
        root = HERE / "src" if getattr(self, "editable_mode", False) else Path(self.build_lib)
        for rel, data in GENERATED.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


class SdistWithProto(sdist):
    """An sdist carries a copy of proto/, since it is built away from the checkout."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir) / "proto"
        dest.mkdir(exist_ok=True)
        for f in PROTO_FILES:
            shutil.copyfile(proto_dir() / f, dest / f)


if __name__ == "__main__":  # as setuptools runs it; tests/test_package.py imports it instead
    setup(
        install_requires=dependencies(GENERATED),
        cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto},
    )
