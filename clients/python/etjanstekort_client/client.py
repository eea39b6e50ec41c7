"""`DeregistrationClient`: the care provider's calls with typed errors, idempotent retries of
`create`, paging for `list` and a `watch` that ends at a terminal state."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any, Callable, Iterator

import grpc

from etjanstekort_client._gen.etjanstekort.v1 import (
    deregistration_service_pb2 as pb,
    deregistration_service_pb2_grpc as pb_grpc,
    types_pb2,
)
from etjanstekort_client.errors import GatewayError, Unavailable, from_rpc_error

TERMINAL_STATES = frozenset(
    {types_pb2.STATE_COMPLETED, types_pb2.STATE_REJECTED, types_pb2.STATE_CANCELLED}
)


# Hex digits 0-9 written as g-p: the gateway refuses an id holding a valid personnummer, which
# random digits form now and then; an id without digits can never be refused.
_NO_DIGITS = str.maketrans("0123456789", "ghijklmnop")


def new_request_id() -> str:
    """A fresh idempotency key: a random UUID (122 random bits) written without digits.

    It fits the gateway's 1-64 of A-Z a-z 0-9 . _ - and, holding no digits, never trips its
    refusal of ids that contain an identity number.
    """
    return str(uuid.uuid4()).translate(_NO_DIGITS)


class DeregistrationClient:
    """The DeregistrationService over a channel from `connect`.

    Every method raises a `GatewayError` subclass on a non-OK status. `create` retries
    `UNAVAILABLE` up to `max_attempts` times, waiting the server's RetryInfo delay when it
    sends one and otherwise an exponential backoff with jitter, always with the same
    request_id, so a retry can never create a second case.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        timeout: float | None = 30.0,
        max_attempts: int = 5,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        # The generated gRPC stub is untyped; each call below names its response type.
        self._stub: Any = pb_grpc.DeregistrationServiceStub(channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._sleep = sleep

    def create(
        self, deregistration: types_pb2.Deregistration, request_id: str | None = None
    ) -> types_pb2.Deregistration:
        """Reports a cut card and returns the stored case. Retrying with the same
        `request_id` and content returns the original case; other content raises
        `AlreadyExists` (reason `DUPLICATE_REQUEST_ID`)."""
        # Chosen once, before the first attempt: every retry must carry the same key.
        request = pb.CreateDeregistrationRequest(
            request_id=request_id or new_request_id(), deregistration=deregistration
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                created: pb.CreateDeregistrationResponse = self._stub.CreateDeregistration(
                    request, timeout=self._timeout
                )
                return created.deregistration
            except grpc.RpcError as e:
                error = from_rpc_error(e)
            if not isinstance(error, Unavailable) or attempt >= self._max_attempts:
                raise error
            self._sleep(self._backoff(attempt, error))

    def _backoff(self, attempt: int, error: GatewayError) -> float:
        if error.retry_delay is not None:
            return error.retry_delay
        ceiling = min(self._max_backoff, self._initial_backoff * 2 ** (attempt - 1))
        # Full jitter: clients failing together do not retry together.
        return random.uniform(0, ceiling)

    def get(self, id: str) -> types_pb2.Deregistration:
        """One of the caller's cases by id."""
        request = pb.GetDeregistrationRequest(id=id)
        try:
            got: pb.GetDeregistrationResponse = self._stub.GetDeregistration(request, timeout=self._timeout)
            return got.deregistration
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def list(
        self,
        *,
        care_unit_hsa_id: str = "",
        state: types_pb2.State = types_pb2.STATE_UNSPECIFIED,
        page_size: int = 0,
    ) -> Iterator[types_pb2.Deregistration]:
        """All the caller's cases matching the filters, oldest first, fetched page by page."""
        token = ""
        while True:
            request = pb.ListDeregistrationsRequest(
                care_unit_hsa_id=care_unit_hsa_id, state=state, page_size=page_size, page_token=token
            )
            try:
                page: pb.ListDeregistrationsResponse = self._stub.ListDeregistrations(request, timeout=self._timeout)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
            yield from page.deregistrations
            token = page.next_page_token
            if not token:
                return

    def watch(self, id: str, timeout: float | None = None) -> Iterator[types_pb2.DeregistrationEvent]:
        """The case's events, past then live, ending after the event that reaches a terminal
        state (COMPLETED, REJECTED, CANCELLED). `timeout` bounds the whole stream."""
        stream = self._stub.WatchDeregistration(pb.WatchDeregistrationRequest(id=id), timeout=timeout)
        try:
            for response in stream:
                yield response.event
                if response.event.state in TERMINAL_STATES:
                    return
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            # Ends the call if the caller stops early or we stopped at the terminal event.
            stream.cancel()

    def cancel(self, id: str, reason: str = "") -> types_pb2.Deregistration:
        """Withdraws a case before its report went out (else `FailedPrecondition`)."""
        request = pb.CancelDeregistrationRequest(id=id, reason=reason)
        try:
            cancelled: pb.CancelDeregistrationResponse = self._stub.CancelDeregistration(
                request, timeout=self._timeout
            )
            return cancelled.deregistration
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
