"""Quickstart for a care provider's system: report a cut card, follow it to the end, list
cases, and handle the gateway's errors. docs/integration.md shows the marked regions of this
file; CI runs it against a real gateway (tests/test_examples.py).

Configuration from the environment:
  ETK_ADDRESS      host:port of the gateway
  ETK_CA           PEM file of the CA that issued the gateway's certificate
  ETK_CERT/ETK_KEY the SITHS function certificate and its private key (PEM)
  ETK_CARE_UNIT    HSA-id of one of your care units
  ETK_SERVER_NAME  optional: the name in the gateway's certificate, if not the address's host
"""

import datetime
import os
import secrets

# [START connect]
from etjanstekort_client import DeregistrationClient, connect

channel = connect(
    os.environ["ETK_ADDRESS"],
    ca_pem=os.environ["ETK_CA"],
    cert_pem=os.environ["ETK_CERT"],
    key_pem=os.environ["ETK_KEY"],
    server_name=os.environ.get("ETK_SERVER_NAME"),
)
client = DeregistrationClient(channel)
# [END connect]

# [START create]
from google.protobuf.timestamp_pb2 import Timestamp

from etjanstekort_client import new_request_id, types_pb2

received = Timestamp()
received.FromDatetime(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
report = types_pb2.Deregistration(
    care_unit_hsa_id=os.environ["ETK_CARE_UNIT"],
    card_holder=types_pb2.CardHolder(
        personal_identity_number="19121212-1212", full_name="Tolvan Tolvansson"
    ),
    card_number="9752" + "".join(secrets.choice("0123456789") for _ in range(16)),
    reason=types_pb2.REASON_EMPLOYMENT_ENDED,
    card_received_time=received,
    card_cut_across_chip=True,
    reported_by=types_pb2.Reporter(
        hsa_id="SE1655999991-P000000000001", full_name="Verksamhets Chef", email="chef@example.org"
    ),
    kiv_removal_route=types_pb2.KIV_REMOVAL_ROUTE_CARE_PROVIDER,
)
# Keep the request_id with the report (e.g. in your database) before sending: if your
# process dies before the answer arrives, sending again with the same id is safe.
request_id = new_request_id()
case = client.create(report, request_id=request_id)
print("created", case.id, types_pb2.State.Name(case.state))
# [END create]

# [START watch]
for event in client.watch(case.id, timeout=120):
    print("event", event.sequence, event.kind, types_pb2.State.Name(event.state))
final = client.get(case.id)
print("final", types_pb2.State.Name(final.state), final.revocation_reference)
# [END watch]

# [START list]
for c in client.list(care_unit_hsa_id=os.environ["ETK_CARE_UNIT"], page_size=50):
    print("case", c.id, types_pb2.State.Name(c.state))
# [END list]

# [START retry]
# Sending the same report with the same request_id again (after a timeout, a crash, a lost
# answer) returns the original case instead of creating a second one.
again = client.create(report, request_id=request_id)
assert again.id == case.id
# [END retry]

# [START errors]
from etjanstekort_client import AlreadyExists, GatewayError, InvalidArgument


def explain(e: GatewayError) -> str:
    """What a care provider's system does with each error (branch on reason, not message)."""
    if isinstance(e, InvalidArgument):
        return "fix the report: " + "; ".join(f"{v.field} ({v.reason})" for v in e.field_violations)
    if e.reason == "DUPLICATE_REQUEST_ID":
        return "bug: a request_id was reused for another report; use a new one per report"
    if e.reason == "CARD_HAS_ACTIVE_CASE":
        return "already reported: follow the existing case"
    if e.reason in ("CASE_NOT_FOUND", "ROLE_REQUIRED", "UNIT_NOT_GRANTED", "UNKNOWN_PRINCIPAL"):
        return "check the case id, the certificate and its care units with the region"
    if e.reason in ("STORE_UNAVAILABLE", "CONCURRENT_REQUEST"):
        return f"retry with the same request_id after {e.retry_delay or 1} s"
    return f"unexpected {e.code.name} {e.reason}: {e.message}"


other = types_pb2.Deregistration()
other.CopyFrom(report)
other.card_number = "9752" + "".join(secrets.choice("0123456789") for _ in range(16))
try:
    client.create(other, request_id=request_id)  # the key of the first report
except AlreadyExists as e:
    print("refused:", explain(e))

other.card_cut_across_chip = False
try:
    client.create(other)
except GatewayError as e:
    print("refused:", explain(e))
# [END errors]
