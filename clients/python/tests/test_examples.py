"""The quickstart runs against the real gateway, and INTEGRATION.md shows exactly its code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import EXPECT_ERROR_INFO, Gateway

PACKAGE = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include: (?P<file>[\w./-]+)#(?P<region>\w+) -->\n```python\n(?P<code>.*?)```\n", re.S)


def region(file: Path, name: str) -> str:
    m = re.search(rf"# \[START {name}\]\n(.*?)# \[END {name}\]\n", file.read_text(), re.S)
    assert m, f"no region {name} in {file}"
    return m.group(1)


def test_integration_guide_shows_the_tested_code() -> None:
    guide = (PACKAGE / "INTEGRATION.md").read_text()
    includes = list(INCLUDE.finditer(guide))
    assert {m["region"] for m in includes} >= {"connect", "create", "watch", "list", "retry", "errors"}
    for m in includes:
        assert m["code"] == region(PACKAGE / m["file"], m["region"]), f"{m['region']} differs"


def test_quickstart_runs_against_the_gateway(gateway: Gateway) -> None:
    creds = gateway.credentials("provider-a")
    env = dict(
        os.environ,
        ETK_ADDRESS=gateway.address,
        ETK_CA=creds["ca_pem"],
        ETK_CERT=creds["cert_pem"],
        ETK_KEY=creds["key_pem"],
        ETK_SERVER_NAME=creds["server_name"],
        ETK_CARE_UNIT=gateway.care_unit("provider-a"),
    )
    run = subprocess.run(
        [sys.executable, str(PACKAGE / "examples" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "final STATE_COMPLETED" in out
    assert "refused: fix the report: deregistration.card_cut_across_chip (MUST_BE_TRUE)" in out
    # The second report with the first report's request_id is refused, never stored.
    assert out.count("\nrefused: ") == 2
    if EXPECT_ERROR_INFO:
        assert "refused: bug: a request_id was reused" in out
