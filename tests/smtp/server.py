"""A real SMTP server for the tests: aiosmtpd with STARTTLS required.

Every accepted message is written to OUT as <time>-<n>.eml. Fault injection by files in OUT:
REJECT makes recipients fail permanently (550) — every recipient if the file is empty, else the
addresses it lists, one a line; TEMPFAIL makes DATA fail transiently (451); STALL holds the reply
to DATA for the number of seconds it contains.
Prints "READY <port>" once listening; runs until stdin closes or it is killed.
"""

import argparse
import asyncio
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out):
        self.out = out
        self.n = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reject = os.path.join(self.out, "REJECT")
        if os.path.exists(reject):
            with open(reject) as f:
                listed = [line.strip() for line in f if line.strip()]
            if not listed or address in listed:
                return f"550 5.1.1 <{address}>: Recipient address rejected (test)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if os.path.exists(os.path.join(self.out, "TEMPFAIL")):
            return "451 4.3.0 Try again later (test)"
        stall = os.path.join(self.out, "STALL")
        if os.path.exists(stall):
            with open(stall) as f:
                await asyncio.sleep(float(f.read().strip() or "0"))
        self.n += 1
        name = f"{time.time_ns()}-{self.n}.eml"
        tmp = os.path.join(self.out, "." + name)
        with open(tmp, "wb") as f:
            f.write(b"X-Envelope-To: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(self.out, name))
        return "250 Message accepted"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    controller = Controller(
        Handler(a.out),
        hostname="127.0.0.1",
        port=a.port,
        tls_context=ctx,
        require_starttls=True,
    )
    controller.start()
    print(f"READY {a.port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
