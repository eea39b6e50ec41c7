"""The client against a real gateway over mTLS."""

from __future__ import annotations

import grpc
import pytest
from conftest import Gateway, assert_reason
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from etjanstekort_client import (
    AlreadyExists,
    DeregistrationClient,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    types_pb2,
)


def test_create_get_watch_to_the_end(provider_a: DeregistrationClient, new_report) -> None:
    report = new_report()
    case = provider_a.create(report)
    assert case.id and case.state == types_pb2.STATE_ACCEPTED
    assert case.card_number == report.card_number
    # Responses mask the personnummer for this role.
    assert case.card_holder.personal_identity_number == "19121212-****"

    fetched = provider_a.get(case.id)
    assert fetched.id == case.id and fetched.card_number == report.card_number

    events = list(provider_a.watch(case.id, timeout=60))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].kind == "accepted"
    assert events[-1].state == types_pb2.STATE_COMPLETED
    assert all(e.deregistration_id == case.id for e in events)
    assert provider_a.get(case.id).state == types_pb2.STATE_COMPLETED

    # A completed case can no longer be withdrawn.
    with pytest.raises(FailedPrecondition) as err:
        provider_a.cancel(case.id, reason="too late")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_validation_error_carries_field_violations(provider_a: DeregistrationClient, new_report) -> None:
    report = new_report()
    report.card_cut_across_chip = False
    report.ClearField("care_unit_hsa_id")
    with pytest.raises(InvalidArgument) as err:
        provider_a.create(report)
    violations = {v.field: v for v in err.value.field_violations}
    assert violations["deregistration.card_cut_across_chip"].reason == "MUST_BE_TRUE"
    assert violations["deregistration.care_unit_hsa_id"].reason == "REQUIRED"
    assert all(v.description for v in violations.values())
    # Nothing of the rejected values comes back, in particular not the personnummer.
    assert "19121212" not in str(err.value)
    assert_reason(err.value, "VALIDATION_FAILED")


def test_same_request_id_and_content_returns_the_same_case(
    provider_a: DeregistrationClient, new_report
) -> None:
    report = new_report()
    first = provider_a.create(report, request_id="py-same-1")
    again = provider_a.create(report, request_id="py-same-1")
    assert again.id == first.id


def test_same_request_id_other_content_is_duplicate_request_id(
    provider_a: DeregistrationClient, new_report
) -> None:
    provider_a.create(new_report(), request_id="py-dup-1")
    with pytest.raises(AlreadyExists) as err:
        provider_a.create(new_report(), request_id="py-dup-1")
    assert_reason(err.value, "DUPLICATE_REQUEST_ID")


def test_second_report_of_an_active_card_is_refused(
    provider_a: DeregistrationClient, new_report
) -> None:
    report = new_report()
    provider_a.create(report)
    with pytest.raises(AlreadyExists) as err:
        provider_a.create(report)  # a new request_id each time
    assert_reason(err.value, "CARD_HAS_ACTIVE_CASE")


def test_unknown_case_is_not_found(provider_a: DeregistrationClient) -> None:
    with pytest.raises(NotFound) as err:
        provider_a.get("01a2293d-e352-72cb-b225-07e767624ca7")
    assert_reason(err.value, "CASE_NOT_FOUND")


def test_other_providers_case_is_not_found(
    gateway: Gateway, provider_a: DeregistrationClient, new_report
) -> None:
    case = provider_a.create(new_report())
    with gateway.channel("provider-b") as channel:
        with pytest.raises(NotFound):
            DeregistrationClient(channel).get(case.id)


def test_wrong_role_is_permission_denied(gateway: Gateway) -> None:
    with gateway.channel("office") as channel:
        with pytest.raises(PermissionDenied) as err:
            list(DeregistrationClient(channel).list())
    assert_reason(err.value, "ROLE_REQUIRED")


def test_list_pages_through_all_cases(provider_a: DeregistrationClient, new_report) -> None:
    created = [provider_a.create(new_report()).id for _ in range(3)]
    one_by_one = [c.id for c in provider_a.list(page_size=1)]
    at_once = [c.id for c in provider_a.list(page_size=100)]
    assert one_by_one == at_once
    assert len(set(one_by_one)) == len(one_by_one)
    assert set(created) <= set(one_by_one)


class _LostAnswer(grpc.RpcError):
    """What a client sees when the connection drops after the server stored the case."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"

    def trailing_metadata(self):
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=50_000_000))
        status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="connection reset")
        status.details.add().Pack(info)
        return (("grpc-status-details-bin", status.SerializeToString()),)


class _LoseFirstAnswer(grpc.UnaryUnaryClientInterceptor):
    """Lets the first CreateDeregistration reach the gateway, then drops its answer."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def intercept_unary_unary(self, continuation, call_details, request):
        if not call_details.method.endswith("/CreateDeregistration"):
            return continuation(call_details, request)
        self.request_ids.append(request.request_id)
        outcome = continuation(call_details, request)
        if len(self.request_ids) == 1:
            outcome.result()  # the gateway has stored the case
            raise _LostAnswer()
        return outcome


def test_retry_after_a_lost_answer_reuses_the_request_id(
    gateway: Gateway, provider_a: DeregistrationClient, new_report
) -> None:
    lose = _LoseFirstAnswer()
    slept: list[float] = []
    with gateway.channel("provider-a") as channel:
        client = DeregistrationClient(grpc.intercept_channel(channel, lose), sleep=slept.append)
        report = new_report()
        case = client.create(report)  # no request_id given: the client picks one, once

    assert len(lose.request_ids) == 2 and lose.request_ids[0] == lose.request_ids[1]
    assert slept == [0.05]  # the RetryInfo delay, not the client's own backoff
    # The retry returned the stored case; no second case exists for the card.
    same_card = [c for c in provider_a.list() if c.card_number == report.card_number]
    assert [c.id for c in same_card] == [case.id]
