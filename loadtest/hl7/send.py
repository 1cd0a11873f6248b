"""`python -m loadtest.hl7.send FILE...`: send the HL7 messages of files over MLLP.

A file holds one or more messages; each starts with a line beginning `MSH`, segments
end with CR, LF or CRLF (so files written in an editor work). Every message is sent,
its ACK awaited, and one line printed per message: control ID, ACK code, and the
reason of an AE/AR. The exit status is 0 when every message got AA, 1 otherwise.
`-` reads standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from pathlib import Path

from hl7_ingest.exceptions import MllpError
from loadtest.hl7.client import MllpClient

__all__ = ["main", "split_messages"]


def split_messages(text: str) -> list[str]:
    """The messages of a file: segments joined by CR, a new message at every MSH."""
    messages: list[list[str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = line.rstrip()
        if not line:
            continue
        if line.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return ["\r".join(segments) + "\r" for segments in messages]


async def send_files(args: argparse.Namespace, texts: list[str]) -> int:
    context: ssl.SSLContext | None = None
    if args.tls or args.tls_ca:
        context = ssl.create_default_context(cafile=args.tls_ca or None)
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    failed = 0
    async with MllpClient(args.host, args.port, timeout=args.timeout, ssl_context=context) as c:
        for text in texts:
            for message in split_messages(text):
                try:
                    ack = await c.send(message)
                except MllpError as exc:
                    print(f"-\tERROR\t{exc.reason}")
                    failed += 1
                    continue
                detail = f"\t{ack.error_field}\t{ack.text}" if ack.code != "AA" else ""
                print(f"{ack.control_id}\t{ack.code}{detail}")
                failed += ack.code != "AA"
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.hl7.send", description=__doc__)
    p.add_argument("files", nargs="+", help="files of HL7 messages ('-' for stdin)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each ACK")
    p.add_argument("--tls", action="store_true", help="MLLP over TLS")
    p.add_argument("--tls-ca", default="", help="CA bundle that signed the listener's cert")
    p.add_argument("--insecure", action="store_true", help="TLS without verifying the cert")
    args = p.parse_args(argv)
    texts = [
        sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        for name in args.files
    ]
    return asyncio.run(send_files(args, texts))


if __name__ == "__main__":
    sys.exit(main())
