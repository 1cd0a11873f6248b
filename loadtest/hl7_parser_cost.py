"""What one hostile HL7 message costs the listener before it is answered.

    python -m loadtest.hl7_parser_cost [--size BYTES] [--runs N]

Each shape is a message of about `--size` bytes (1 MiB by default) that a sender can
write: one field repeated a million times (`PID|~~~~...`), a million components,
subcomponents, fields, segments or escape sequences, and for comparison one plain field
of the same size. For each, the step that turns the bytes into a parsed message or an
AR (`hl7_ingest.processor.parse_message` with the default settings, or plain `parse`
on code that predates it) is timed: CPU ms (median of `--runs`), and the peak of the
Python heap while it runs (tracemalloc, a separate run: tracing slows the timing).
Fields are split on first read, so "read all" also reads every field of every segment:
the most any reader of the message can make parsing cost.

Prints one line per shape and a JSON summary (`--json` for only the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable

__all__ = ["SHAPES", "main", "measure"]

_HEADER = "MSH|^~\\&|RIS|NWGEN|RISLIVE|RISLIVE|20250101000000||ORM^O01|C000000001|P|2.3.1\r"


def _fill(prefix: str, unit: str, size: int) -> bytes:
    body = size - len(_HEADER) - len(prefix)
    return (_HEADER + prefix + unit * max(1, body // len(unit))).encode()


def _at_the_limits(size: int) -> bytes:
    """Every part at the listener's limit at once (the worst a cap still admits)."""
    try:
        from hl7_ingest.settings import Hl7Settings

        st = Hl7Settings()
        limits = (st.max_segments, st.max_fields, st.max_repetitions, st.max_components)
        segments, fields, reps, comps, escapes = (*limits, st.max_escapes)
    except (ImportError, AttributeError):  # code without limits: what the first ones were
        segments, fields, reps, comps, escapes = 2000, 20_000, 5000, 50_000, 20_000
    n = segments - 2  # the header and the PID below are two
    per = {
        "|": (fields - 20) // n,
        "~": (reps - 1) // n,
        "^": (comps - 4) // n,
        "\\": (escapes - 1) // n,
    }
    line = "ZZ1" + "|" * per["|"] + "~" * per["~"] + "^" * per["^"] + "\\F\\" * per["\\"]
    body = "PID|1\r" + "\r".join([line] * n)
    pad = size - len(_HEADER) - len(body)
    return (_HEADER + body + "A" * max(0, pad)).encode()


def _one_field_at_the_limits(size: int) -> bytes:
    """PID-3, a field every reader reads, holding every repetition, component and
    escape sequence the limits allow."""
    raw = _at_the_limits(size).decode()
    fields = raw.count("|")
    reps, comps, escapes = raw.count("~") - 1, raw.count("^") - 1, raw.count("\\") - 1
    pid3 = "~" * reps + "^" * comps + "\\F\\" * (escapes // 2)
    body = "PID|1||" + pid3 + "|" * (fields - _HEADER.count("|") - 3)
    pad = size - len(_HEADER) - len(body)
    return (_HEADER + body + "A" * max(0, pad)).encode()


SHAPES: dict[str, Callable[[int], bytes]] = {
    "repetitions": lambda n: _fill("PID|", "~", n),
    "components": lambda n: _fill("PID|", "^", n),
    "subcomponents": lambda n: _fill("PID|", "&", n),
    "fields": lambda n: _fill("PID|", "|", n),
    "segments": lambda n: _fill("PID|1", "\rZZ1|", n),
    "escapes": lambda n: _fill("PID|", "\\", n),
    "hex escapes": lambda n: _fill("PID|", "\\X41\\", n),
    "one plain field": lambda n: _fill("PID|", "A", n),
    "all at the limits": _at_the_limits,
    "one field at them": _one_field_at_the_limits,
}


def _parser() -> Callable[[bytes], object]:
    """The ingest's own first step: what a connection pays before identity is checked."""
    try:
        from hl7_ingest.processor import parse_message
        from hl7_ingest.settings import Hl7Settings
    except ImportError:  # before the parser had caps
        from hl7_ingest.exceptions import MessageRejected
        from hl7_ingest.message import parse
        from hl7_ingest.processor import decode

        def old(raw: bytes) -> object:
            try:
                return parse(decode(raw))
            except MessageRejected as exc:
                return exc

        return old
    from hl7_ingest.exceptions import MessageRejected

    settings = Hl7Settings()

    def new(raw: bytes) -> object:
        try:
            return parse_message(raw, settings)
        except MessageRejected as exc:
            return exc

    return new


def _read_all(message: object) -> None:
    for seg in getattr(message, "segments", []):
        for number in range(1, len(seg.fields)):
            seg.field(number)


def _timed(fn: Callable[[], object], runs: int) -> tuple[list[float], int]:
    times = []
    for _ in range(runs):
        started = time.process_time()
        fn()
        times.append((time.process_time() - started) * 1000)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return times, peak


def measure(raw: bytes, runs: int) -> dict[str, float | str]:
    parse = _parser()
    outcome = parse(raw)
    times, peak = _timed(lambda: parse(raw), runs)
    all_times, all_peak = _timed(lambda: _read_all(parse(raw)), runs)
    answer = type(outcome).__name__
    reason = getattr(outcome, "reason", "")
    return {
        "bytes": len(raw),
        "cpu_ms": round(statistics.median(times), 2),
        "cpu_ms_max": round(max(times), 2),
        "peak_mib": round(peak / (1 << 20), 2),
        "read_all_cpu_ms": round(statistics.median(all_times), 2),
        "read_all_peak_mib": round(all_peak / (1 << 20), 2),
        "outcome": f"{answer}: {reason}" if reason else answer,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.hl7_parser_cost")
    p.add_argument("--size", type=int, default=1 << 20, help="bytes per message")
    p.add_argument("--runs", type=int, default=5, help="timed runs per shape (median)")
    p.add_argument("--json", action="store_true", help="print only the JSON summary")
    args = p.parse_args(argv)
    results = {name: measure(make(args.size), args.runs) for name, make in SHAPES.items()}
    if not args.json:
        print(
            f"{'shape':<18} {'bytes':>8} {'cpu ms':>8} {'max ms':>8} {'peak MiB':>9}"
            f" {'read all ms':>12} {'read all MiB':>13}  outcome"
        )
        for name, r in results.items():
            print(
                f"{name:<18} {r['bytes']:>8} {r['cpu_ms']:>8} {r['cpu_ms_max']:>8}"
                f" {r['peak_mib']:>9} {r['read_all_cpu_ms']:>12} {r['read_all_peak_mib']:>13}"
                f"  {r['outcome']}"
            )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
