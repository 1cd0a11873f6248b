"""The stream relay: DynamoDB Streams -> normalized, versioned deltas -> the Redis feed.

- `stream`: shard discovery and lineage, one reader per shard, checkpointed (`StreamRelay`);
- `checkpoints`: per-shard checkpoints and shard leases in Redis (`RedisCheckpoints`);
- `normalize`: a stream record -> an exam or review delta;
- `sampler`: pools a share of newly FINAL exams for peer review;
- `worker`: the long-lived process (`python -m relay`): relay, maintenance, anti-entropy;
- `lambda_handler`: the same pipeline as an AWS Lambda function;
- `antientropy`: the operator's cache-versus-DynamoDB check (`python -m relay.antientropy`).
"""

from __future__ import annotations
