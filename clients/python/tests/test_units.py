"""Pieces that need no cluster: error parsing, retryable codes, hints, payloads, results."""

from __future__ import annotations

import grpc
import pytest

import flotilla
from flotilla import errors
from flotilla.client import leader_hint, retryable
from flotilla.worker import _result_bytes, _truncate_utf8


def test_invalid_argument_names_the_field():
    e = errors.rejected(grpc.StatusCode.INVALID_ARGUMENT, "invalid tasks[3].labels: label \"\" must have a key")
    assert isinstance(e, flotilla.InvalidArgumentError)
    assert e.field == "tasks[3].labels" and e.reason == 'label "" must have a key'
    assert str(e) == 'INVALID_ARGUMENT: invalid tasks[3].labels: label "" must have a key'
    bare = errors.rejected(grpc.StatusCode.INVALID_ARGUMENT, "something else")
    assert bare.field is None and bare.reason == "something else"
    assert type(errors.rejected(grpc.StatusCode.OUT_OF_RANGE, "no")) is flotilla.RejectedError
    assert type(errors.rejected(grpc.StatusCode.PERMISSION_DENIED, "no")) is flotilla.PermissionDeniedError
    assert type(errors.rejected(grpc.StatusCode.UNAUTHENTICATED, "no")) is flotilla.UnauthenticatedError
    assert isinstance(errors.rejected(grpc.StatusCode.FAILED_PRECONDITION, "stale"), flotilla.FailedPreconditionError)


def test_retryable_codes():
    for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "ABORTED"):
        assert retryable(getattr(grpc.StatusCode, code), "")
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS", "INTERNAL"):
        assert not retryable(getattr(grpc.StatusCode, code), "")
    assert retryable(grpc.StatusCode.INTERNAL, "h2 protocol error: connection reset")


class _Refusal(grpc.RpcError):
    def __init__(self, md):
        self.md = md

    def trailing_metadata(self):
        return self.md

    def initial_metadata(self):
        return ()


def test_leader_hint_parsing():
    assert leader_hint(_Refusal((("flotilla-leader", "2=10.0.0.2:7400"),))) == "10.0.0.2:7400"
    assert leader_hint(_Refusal((("other", "x"),))) is None
    assert leader_hint(_Refusal((("flotilla-leader", "garbage"),))) is None


def test_command_payload_round_trip_and_refusals():
    p = flotilla.CommandPayload(["make", "all"], {"CC": "clang"}, "/src")
    assert flotilla.CommandPayload.decode(p.encode()) == p
    assert flotilla.command_payload(["true"]) == b'{"argv":["true"]}'
    for bad in (b"[]", b'{"argv": "ls"}', b'{"argv": [1]}', b'{"argv": [], "env": {"A": 1}}', b"\xff"):
        with pytest.raises(ValueError):
            flotilla.CommandPayload.decode(bad)
    with pytest.raises(ValueError):
        flotilla.CommandPayload([]).encode()


def test_handler_results():
    assert _result_bytes(None) == b""
    assert _result_bytes("é") == "é".encode()
    assert _result_bytes(bytearray(b"x")) == b"x"
    with pytest.raises(flotilla.TaskFailed) as e:
        _result_bytes(42)
    assert not e.value.retryable and "int" in e.value.message


def test_client_settings_are_checked():
    with pytest.raises(ValueError):
        flotilla.Client("127.0.0.1:1", call_timeout=0)
    with pytest.raises(ValueError):
        flotilla.Client("127.0.0.1:1", backoff_initial=2, backoff_max=1)
    c = flotilla.Client(" http://127.0.0.1:1 , 127.0.0.1:2 ")
    assert c.endpoints == ("127.0.0.1:1", "127.0.0.1:2")
    c.close()
    with pytest.raises(flotilla.FlotillaError, match="closed"):
        c.get(1)


def test_error_messages_are_cut_to_the_servers_limit_on_a_character_boundary():
    assert _truncate_utf8("é" * 3000, 4096) == "é" * 2048
    assert _truncate_utf8("aé", 2) == "a"
    assert _truncate_utf8("short", 4096) == "short"
