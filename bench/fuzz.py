"""A long schemathesis campaign over the API's own OpenAPI document (issue 10: at least
20,000 requests, 0 answers of 500 or more).

The app runs in-process (ASGI) on the real Redis (a fresh key prefix, deleted after) and a
fresh PostgreSQL database (dropped after). Every operation gets positive and negative
examples, round after round with new seeds, until the request count is reached. Prints the
count of requests, the answers by status class, every 5xx and the other check failures.

    python bench/fuzz.py --requests 20000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import tempfile
import time
import uuid
from typing import Any

import hypothesis
import psycopg
import redis
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    positive_data_acceptance,
    response_schema_conformance,
)

from service.api.app import create_app
from service.api.auth import issue_token
from service.history.engine import run_migrations
from service.settings import Settings

# As in tests/api/test_fuzz_openapi.py: checks that fail on what the document says today.
# --no-response-schemas also skips response_schema_conformance.
EXCLUDED_CHECKS = [positive_data_acceptance, allow_header_conformance]
EXCLUDED_PATHS = ["/metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--examples", type=int, default=300, help="per operation, mode, round")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-response-schemas", action="store_true")
    args = parser.parse_args()
    if args.no_response_schemas:
        EXCLUDED_CHECKS.append(response_schema_conformance)

    prefix = f"fuzz{uuid.uuid4().hex[:8]}"
    database = f"tollgate_{prefix}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    database_url = f"{args.postgres.rsplit('/', 1)[0]}/{database}"
    try:
        run_migrations(database_url)
        with tempfile.TemporaryDirectory() as files:
            secret = "fuzz-secret-" + "x" * 32
            app = create_app(Settings(
                redis_url=args.redis_url, queue_redis_url=args.redis_url,
                database_url=database_url, jwt_secret=secret, key_prefix=prefix,
                queue_name=prefix, storage_dir=files, flush_delay=0))
            schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app).exclude(
                path=EXCLUDED_PATHS)
            token = issue_token(secret, "fuzz-admin", admin=True)

            @schema.auth()
            class AdminBearer:  # as in tests/api/test_fuzz_openapi.py
                def get(self, case: Any, context: Any) -> str:
                    return token

                def set(self, case: Any, data: str, context: Any) -> None:
                    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

            return campaign(schema, args.requests, args.examples)
    finally:
        client = redis.Redis.from_url(args.redis_url)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def campaign(schema: Any, target: int, examples: int) -> int:
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: collections.Counter[int] = collections.Counter()
    server_errors: list[str] = []
    failures: collections.Counter[str] = collections.Counter()
    first_seen: dict[str, str] = {}
    started = time.monotonic()

    def on_case(case: Any) -> None:
        response = case.call()
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(f"{response.status_code} {case.as_curl_command()}"[:500])
        try:
            case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                name = f"{case.operation.label}: {failure.title}"
                failures[name] += 1
                first_seen.setdefault(name, f"{failure.message} | {case.as_curl_command()}"[:600])

    seed = 0
    while sum(statuses.values()) < target:
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                seed += 1

                @hypothesis.seed(seed)
                @settings(max_examples=examples, deadline=None, database=None,
                          phases=[Phase.generate], suppress_health_check=list(HealthCheck))
                @given(case=operation.as_strategy(generation_mode=mode))
                def run(case: Any) -> None:
                    on_case(case)

                # Negative mode on an operation with nothing to get wrong is unsatisfiable.
                with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                    run()
        total = sum(statuses.values())
        print(f"after round: {total} requests, {time.monotonic() - started:.0f} s", flush=True)

    total = sum(statuses.values())
    by_class = collections.Counter(f"{status // 100}xx" for status in statuses.elements())
    print(f"requests: {total} over {len(operations)} operations in "
          f"{time.monotonic() - started:.0f} s")
    print("answers:", dict(sorted(by_class.items())), " by status:", dict(sorted(statuses.items())))
    print(f"responses >= 500: {len(server_errors)}")
    for line in server_errors[:20]:
        print("  ", line)
    print(f"other check failures: {sum(failures.values())}")
    for name, count in failures.most_common(20):
        print(f"   {count:6d}  {name}\n           e.g. {first_seen[name]}")
    return 1 if server_errors or failures else 0


if __name__ == "__main__":
    sys.exit(main())
