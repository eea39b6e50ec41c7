"""A real gateway for the tests: the binary from ETK_GATEWAY_BIN (default
target/debug/etjanstekort-gateway in the repository) in dev mode on a free port, with its dev
certificates and identities in a temporary directory."""

from __future__ import annotations

import datetime
import json
import os
import queue
import secrets
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from etjanstekort_client import DeregistrationClient, connect, types_pb2

REPO = Path(__file__).resolve().parents[3]
# CI sets this once the gateway sends google.rpc.ErrorInfo on every error; the reason checks
# are strict then (and skipped without it, for gateways that do not send ErrorInfo yet).
EXPECT_ERROR_INFO = os.environ.get("ETK_EXPECT_ERROR_INFO") == "1"
LISTENING = "etjanstekort-gateway listening on "


@dataclass
class Gateway:
    address: str
    data_dir: Path
    identities: dict

    def credentials(self, who: str) -> dict[str, str]:
        """connect()'s keyword arguments for the dev identity `who` (e.g. "provider-a")."""
        client = self.identities["clients"][who]
        return {
            "ca_pem": str(self.data_dir / self.identities["ca"]),
            "cert_pem": str(self.data_dir / client["cert"]),
            "key_pem": str(self.data_dir / client["key"]),
            # The dev server certificate names localhost, not 127.0.0.1.
            "server_name": "localhost",
        }

    def channel(self, who: str) -> grpc.Channel:
        return connect(self.address, **self.credentials(who))

    def care_unit(self, who: str) -> str:
        return self.identities["clients"][who]["care_units"][0]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    binary = Path(os.environ.get("ETK_GATEWAY_BIN", REPO / "target/debug/etjanstekort-gateway"))
    if not binary.is_absolute():
        binary = REPO / binary
    assert binary.is_file(), f"gateway binary not found at {binary}; build it or set ETK_GATEWAY_BIN"
    data_dir = tmp_path_factory.mktemp("gateway")
    log = open(data_dir / "gateway.log", "wb")
    env = dict(os.environ, NO_COLOR="1", ETK_ADMIN__LISTEN="127.0.0.1:0")
    proc = subprocess.Popen(
        [str(binary), "serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        cwd=REPO,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        # Keeps reading so that the pipe never fills and blocks the server.
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    address = None
    try:
        while address is None:
            line = lines.get(timeout=60)
            assert line is not None, "gateway exited early: " + (data_dir / "gateway.log").read_text()
            if line.startswith(LISTENING):
                address = line[len(LISTENING) :].strip()
        identities = json.loads((data_dir / "dev-identities.json").read_text())
        yield Gateway(address, data_dir, identities)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def provider_a(gateway: Gateway) -> Iterator[DeregistrationClient]:
    channel = gateway.channel("provider-a")
    yield DeregistrationClient(channel)
    channel.close()


def random_card_number() -> str:
    return "9752" + "".join(secrets.choice("0123456789") for _ in range(16))


@pytest.fixture
def new_report(gateway: Gateway) -> Callable[[], types_pb2.Deregistration]:
    """A valid report for provider-a's care unit with synthetic data and a fresh card number."""

    def make() -> types_pb2.Deregistration:
        received = Timestamp()
        received.FromDatetime(
            datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
        )
        return types_pb2.Deregistration(
            care_unit_hsa_id=gateway.care_unit("provider-a"),
            card_holder=types_pb2.CardHolder(
                personal_identity_number="19121212-1212", full_name="Tolvan Tolvansson"
            ),
            card_number=random_card_number(),
            reason=types_pb2.REASON_EMPLOYMENT_ENDED,
            card_received_time=received,
            card_cut_across_chip=True,
            reported_by=types_pb2.Reporter(
                hsa_id="SE1655999991-P000000000001",
                full_name="Verksamhets Chef",
                email="chef@example.org",
            ),
            kiv_removal_route=types_pb2.KIV_REMOVAL_ROUTE_CARE_PROVIDER,
        )

    return make


def assert_reason(error, reason: str) -> None:
    """The ErrorInfo reason and domain, checked when the gateway is expected to send them."""
    if EXPECT_ERROR_INFO:
        assert error.reason == reason, error
        assert error.domain == "etjanstekort.vgregion.se", error
