"""Local real parts for the demo and the tests: a private redis-server (or a three-master
Redis Cluster), AWS's DynamoDB Local and a PostgreSQL cluster on free loopback ports, and
a small supervisor for child processes.

Nothing here is used in production; there the endpoints come from settings.
"""

from __future__ import annotations

from devstack.cluster import RedisClusterProcs, start_redis_cluster
from devstack.postgres import PostgresCluster, start_postgres
from devstack.procs import ManagedProcess, free_port, wait_for_port
from devstack.services import start_dynamodb_local, start_redis

__all__ = [
    "ManagedProcess",
    "PostgresCluster",
    "RedisClusterProcs",
    "free_port",
    "start_dynamodb_local",
    "start_postgres",
    "start_redis",
    "start_redis_cluster",
    "wait_for_port",
]
