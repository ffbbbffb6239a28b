"""The installed package: it is the one under test (not ../src), and its stubs were generated
from the repository's proto/ as it is now."""

from __future__ import annotations

from pathlib import Path

import flotilla
from flotilla._proto import flotilla_pb2

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent.parent / "proto"


def test_tests_import_the_installed_package():
    src = (HERE.parent / "src").resolve()
    assert src not in Path(flotilla.__file__).resolve().parents


def test_installed_stubs_match_the_proto(tmp_path):
    """Fails when proto/ changed after the package was installed: reinstall it. Compares the
    file descriptor protoc makes now with the one embedded in the installed stubs (not the
    generated text, which also carries the generator's version)."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "set.pb"
    assert protoc.main([
        "grpc_tools.protoc",
        f"-Iflotilla/_proto={PROTO}",
        f"--descriptor_set_out={out}",
        str(PROTO / "flotilla.proto"),
    ]) == 0
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _strip_json_names(fresh.message_type)  # the Python generator leaves them out
    installed = descriptor_pb2.FileDescriptorProto.FromString(flotilla_pb2.DESCRIPTOR.serialized_pb)
    assert installed.name == fresh.name == "flotilla/_proto/flotilla.proto"
    assert installed == fresh, "proto/flotilla.proto changed since the package was built; reinstall it"
    services = {s.name: [m.name for m in s.method] for s in installed.service}
    assert "SubmitTasks" in services["Flotilla"] and "Register" in services["Workers"]


def _strip_json_names(messages) -> None:
    for m in messages:
        for f in m.field:
            f.ClearField("json_name")
        _strip_json_names(m.nested_type)
