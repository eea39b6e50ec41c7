"""Parts that need no gateway: error decoding, the retry policy, and the committed stubs
matching what generate.sh makes from proto/ today."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from etjanstekort_client import (
    AlreadyExists,
    DeregistrationClient,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    Unavailable,
    from_rpc_error,
    new_request_id,
    types_pb2,
)

PACKAGE = Path(__file__).resolve().parents[1]


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, message: str, *details) -> None:
        self._code, self._message = code, message
        status = status_pb2.Status(code=code.value[0], message=message)
        for d in details:
            status.details.add().Pack(d)
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),) if details else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self):
        return self._trailers


def test_new_request_ids_are_fresh_valid_and_free_of_digits() -> None:
    # The gateway refuses an id holding a valid identity number; one without digits never does.
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert re.fullmatch(r"[a-p]{8}-[a-p]{4}-[a-p]{4}-[a-p]{4}-[a-p]{12}", rid), rid


def test_decodes_error_info_bad_request_and_retry_info() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="VALIDATION_FAILED", domain="etjanstekort.vgregion.se", metadata={"fields": "1"}
    )
    bad = error_details_pb2.BadRequest()
    v = bad.field_violations.add()
    v.field, v.reason, v.description = "deregistration.card_number", "FORMAT", "digits only"
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    e = from_rpc_error(_Failed(grpc.StatusCode.INVALID_ARGUMENT, "invalid request", info, bad, retry))
    assert type(e) is InvalidArgument
    assert (e.reason, e.domain, e.metadata) == ("VALIDATION_FAILED", "etjanstekort.vgregion.se", {"fields": "1"})
    assert e.field_violations == [FieldViolation("deregistration.card_number", "FORMAT", "digits only")]
    assert e.retry_delay == 2.5
    assert e.message == "invalid request"


def test_a_status_without_details_still_maps_to_its_class() -> None:
    e = from_rpc_error(_Failed(grpc.StatusCode.ALREADY_EXISTS, "exists"))
    assert type(e) is AlreadyExists
    assert (e.reason, e.domain, e.field_violations, e.retry_delay) == (None, None, [], None)
    e = from_rpc_error(_Failed(grpc.StatusCode.DATA_LOSS, "lost"))
    assert type(e) is GatewayError and e.code == grpc.StatusCode.DATA_LOSS


class _Stub:
    """Stands in for the generated stub: fails with the given errors, then answers."""

    def __init__(self, *errors: grpc.RpcError) -> None:
        self.errors = list(errors)
        self.request_ids: list[str] = []

    def CreateDeregistration(self, request, timeout=None):
        self.request_ids.append(request.request_id)
        if self.errors:
            raise self.errors.pop(0)
        from etjanstekort_client import deregistration_service_pb2 as pb

        return pb.CreateDeregistrationResponse(deregistration=types_pb2.Deregistration(id="case-1"))


def _client(stub: _Stub, slept: list[float], **kw) -> DeregistrationClient:
    client = DeregistrationClient(grpc.insecure_channel("localhost:1"), sleep=slept.append, **kw)
    client._stub = stub  # type: ignore[assignment]
    return client


def test_unavailable_is_retried_with_growing_backoff_and_the_same_request_id() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    stub = _Stub(*(_Failed(unavailable, "down") for _ in range(3)))
    slept: list[float] = []
    case = _client(stub, slept, initial_backoff=1.0, max_backoff=3.0).create(types_pb2.Deregistration())
    assert case.id == "case-1"
    assert len(set(stub.request_ids)) == 1 and len(stub.request_ids) == 4
    # Full jitter below ceilings of 1, 2 and (capped) 3 seconds.
    assert len(slept) == 3
    assert all(0 <= s <= c for s, c in zip(slept, [1.0, 2.0, 3.0]))


def test_retries_stop_after_max_attempts() -> None:
    stub = _Stub(*(_Failed(grpc.StatusCode.UNAVAILABLE, "down") for _ in range(5)))
    slept: list[float] = []
    with pytest.raises(Unavailable):
        _client(stub, slept, max_attempts=3).create(types_pb2.Deregistration(), request_id="r1")
    assert stub.request_ids == ["r1", "r1", "r1"] and len(slept) == 2


def test_other_errors_are_not_retried() -> None:
    stub = _Stub(_Failed(grpc.StatusCode.ALREADY_EXISTS, "dup"))
    slept: list[float] = []
    with pytest.raises(AlreadyExists):
        _client(stub, slept).create(types_pb2.Deregistration())
    assert len(stub.request_ids) == 1 and slept == []


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "_gen"
    subprocess.run(
        ["bash", str(PACKAGE / "generate.sh"), str(out)],
        check=True,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    committed = PACKAGE / "etjanstekort_client" / "_gen"

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    assert files(out) == files(committed), "run clients/python/generate.sh"
    _, mismatch, errors = filecmp.cmpfiles(committed, out, sorted(files(out)), shallow=False)
    assert mismatch == [] and errors == [], f"stale stubs {mismatch}: run clients/python/generate.sh"
