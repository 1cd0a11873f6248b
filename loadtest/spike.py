"""`make loadtest`: an exam spike against the embedded stack, with locust.

Starts what `make demo` starts (DynamoDB Local, redis-server, relay, gateway, the
simulator playing a normal day) with a signing secret the load users mint tokens with,
then runs `loadtest/locustfile.py` headless with its `ExamSpike` shape and writes
locust's HTML report and CSVs under `loadtest/results/`. `--ui` serves locust's web UI
instead (open the URL it prints; stop with Ctrl-C). Everything stops at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.demo import Demo
from devstack.procs import free_port
from devstack.services import ROOT
from loadtest.settings import LoadtestSettings

RESULTS = ROOT / "loadtest" / "results"
# Seconds a headless run may take beyond its shape (two normal periods and the spike)
# before it is interrupted and reported as failed: a run that does not stop by itself
# must not hold its stack (gateway, relay, DynamoDB Local...) forever.
STOP_GRACE_S = 90


def locust_command(gateway_ws: str, ui: bool, run_time: str | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--host",
        gateway_ws,
    ]
    if ui:
        cmd += ["--web-host", "127.0.0.1", "--web-port", str(free_port())]
    else:
        cmd += [
            "--headless",
            "--csv",
            str(RESULTS / "loadtest"),
            "--html",
            str(RESULTS / "loadtest.html"),
            "--only-summary",
        ]
        if run_time:
            cmd += ["--run-time", run_time]
    return cmd


def seed_people(env: dict[str, str], tenant: str) -> None:
    """Locust's people into the directory, with the operator's import."""
    import json
    import tempfile

    from loadtest.people import directory_people

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(directory_people(tenant), f)
    try:
        subprocess.run(
            [sys.executable, "-m", "dynamo.directory", "--actor", "loadtest", "import", f.name],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        os.unlink(f.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", action="store_true", help="serve locust's web UI")
    parser.add_argument("--quick", action="store_true", help="a 30-second spike (smoke test)")
    args = parser.parse_args(argv)

    secret = secrets.token_urlsafe(32)
    defaults = {
        "normal_s": 10 if args.quick else 30,
        "spike_s": 10 if args.quick else 60,
        "radiologists": 5 if args.quick else 20,
        "reconnectors": 3 if args.quick else 10,
    }
    given = LoadtestSettings()  # what the environment sets wins over this run's defaults
    shape = {
        f"LOADTEST_{name.upper()}": str(
            getattr(given, name) if name in given.model_fields_set else default
        )
        for name, default in defaults.items()
    }
    demo = Demo(extra_env={"GATEWAY_JWT_SECRET": secret, **shape})
    RESULTS.mkdir(parents=True, exist_ok=True)
    code = 1
    try:
        url = demo.start()
        ws = url.replace("http", "ws") + "ws"
        env = {
            **os.environ,
            **demo.env,
            "LOADTEST_GATEWAY": ws,
            "LOADTEST_JWT_SECRET": secret,
            "LOADTEST_HL7_PORT": demo.env["HL7_PORT"],
        }
        seed_people(env, LoadtestSettings().tenant)
        print(f"gateway {url}; running locust ({'web UI' if args.ui else 'headless'})", flush=True)
        locust = subprocess.Popen(locust_command(ws, args.ui, None), env=env, cwd=ROOT)
        limit = None
        if not args.ui:
            seconds = [float(shape[f"LOADTEST_{k}"]) for k in ("NORMAL_S", "SPIKE_S")]
            limit = 2 * seconds[0] + seconds[1] + STOP_GRACE_S
        try:
            code = locust.wait(limit)
        except KeyboardInterrupt:
            locust.send_signal(signal.SIGINT)
            code = locust.wait(30)
        except subprocess.TimeoutExpired:
            print(f"locust did not stop within {limit:.0f} s: interrupted", flush=True)
            locust.send_signal(signal.SIGINT)
            try:
                locust.wait(30)
            except subprocess.TimeoutExpired:
                locust.kill()
                locust.wait()
            code = 1
        if not args.ui:
            print(f"report: {Path(RESULTS / 'loadtest.html').relative_to(ROOT)}", flush=True)
    finally:
        demo.stop()
    # Locust exits 1 when any request failed; the report says which.
    return code


if __name__ == "__main__":
    sys.exit(main())
