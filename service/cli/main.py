"""The `tollgate` command: one entry point for every part of the system."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from typing import Any

from service.cli.startup import default_public_url, processor_problem, redis_or_exit
from service.settings import Settings, get_settings

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 30m, 1h or 7d")
    return int(match[1]) * _UNITS[match[2]]


def _secret_or_exit(settings: Settings) -> str:
    if not settings.jwt_secret:
        sys.exit("TOLLGATE_JWT_SECRET is not set (tokens are signed with it): against a "
                 "`tollgate dev`, export the TOLLGATE_JWT_SECRET=... that its `secret:` line "
                 "prints")
    return settings.jwt_secret


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("tollgate")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def cmd_token(args: argparse.Namespace) -> int:
    import re

    from service.api.auth import issue_token
    from service.api.schemas import USER_ID_PATTERN

    if not re.match(USER_ID_PATTERN, args.user_id):
        sys.exit(f"{args.user_id!r} is not a user id: 1-128 characters of A-Z a-z 0-9 . _ @ | + -")

    print(issue_token(_secret_or_exit(get_settings()), args.user_id, admin=args.admin,
                      ttl_s=args.ttl))
    return 0


def cmd_migrate(_: argparse.Namespace) -> int:
    from service.history.engine import run_migrations

    settings = get_settings()
    run_migrations(settings.database_url)
    print(f"schema is up to date on {settings.database_url.split('@')[-1]}")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import os

    if not os.environ.get("TOLLGATE_PUBLIC_URL"):
        # Every server process reads its settings from the environment: the URLs they hand
        # out point at this server unless the variable names another address.
        os.environ["TOLLGATE_PUBLIC_URL"] = default_public_url(args.host, args.port)
        get_settings.cache_clear()
    settings = get_settings()
    _secret_or_exit(settings)
    redis_or_exit(settings)
    if settings.embedded_redis and args.workers > 1:
        sys.exit("the embedded fakeredis lives in one process: set TOLLGATE_REDIS_URL "
                 "to run several API processes (or use `tollgate dev`)")
    from service.cli.serve import serve

    serve("service.api.app:create_app", host=args.host, port=args.port, workers=args.workers,
          server=args.server)
    return 0


def worker_target(settings: Settings, model_name: str | None, queue: str | None
                  ) -> tuple[str, str]:
    """(queue, processor spec) of `tollgate worker`: the named model's, else the model that
    listens on `--queue`, else the default model's."""
    from service.errors import UnknownModel
    from service.models import ModelsConfigError, load_models

    try:
        models = load_models(settings)
        if model_name is None and queue is not None:
            on_queue = [model for model in models if model.queue == queue]
            # A queue no model names runs TOLLGATE_PROCESSOR, as version 1 workers did.
            return queue, on_queue[0].processor if on_queue else settings.processor
        model = models.get(model_name)
    except UnknownModel:
        sys.exit(f"no model {model_name!r}; configured: "
                 f"{', '.join(m.name for m in load_models(settings))}")
    except ModelsConfigError as exc:
        sys.exit(str(exc))
    if queue is not None and queue != model.queue:
        sys.exit(f"model {model.name!r} is served on queue {model.queue!r}, not {queue!r}")
    return model.queue, model.processor


def cmd_worker(args: argparse.Namespace) -> int:
    from service.state.clients import queue_redis
    from workers.runner import run_worker

    settings = get_settings()
    queue, processor = worker_target(settings, args.model, args.queue)
    redis_or_exit(settings)
    # A forking worker must not run setup() in its parent (CUDA): only the import then.
    problem = processor_problem(args.model or queue, processor, setup=not args.fork)
    if problem is not None:
        sys.exit(problem)
    run_worker(settings, queue_redis(settings), queue_name=queue, processor=processor,
               burst=args.burst, fork=args.fork)
    return 0


def warn_unset_worker_url(settings: Settings, command: str) -> None:
    """The flusher's and the dispatcher's batches carry URLs signed with this process's
    TOLLGATE_INTERNAL_URL, else TOLLGATE_PUBLIC_URL: a process started by hand with neither
    set hands out the default, which fails wherever the API listens elsewhere."""
    if not {"public_url", "internal_url"} & settings.model_fields_set:
        logging.getLogger("tollgate.cli").warning(
            "tollgate %s: neither TOLLGATE_INTERNAL_URL nor TOLLGATE_PUBLIC_URL is set; the "
            "batches it hands to workers call back %s (set either to the API's address; "
            "docs/scheduling.md)", command, settings.worker_url)


def cmd_flusher(args: argparse.Namespace) -> int:
    from service.flusher.loop import run_flusher_with_requeue

    redis_or_exit(get_settings())
    warn_unset_worker_url(get_settings(), "flusher")
    asyncio.run(run_flusher_with_requeue(get_settings(), once=args.once))
    return 0


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from service.flusher.loop import run_dispatcher

    redis_or_exit(get_settings())
    warn_unset_worker_url(get_settings(), "dispatcher")
    asyncio.run(run_dispatcher(get_settings()))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from service.cli.dev import run_dev

    return run_dev(host=args.host, port=args.port)


def cmd_demo(args: argparse.Namespace) -> int:
    from service.cli.demo import run_demo

    settings = get_settings()
    token = args.token
    if token is None:
        from service.api.auth import issue_token

        token = issue_token(_secret_or_exit(settings), args.user, ttl_s=3600)
    return run_demo(args.url or settings.public_url, token, items=args.items)


def cmd_inspect(args: argparse.Namespace) -> int:
    from service.cli.inspect import inspect_failures, inspect_job, inspect_user, missing

    settings = get_settings()
    if args.what == "failures":  # SQL only
        if args.retry not in (None, "all") and not args.retry.isdigit():
            sys.exit(f"--retry takes a failure id (a number), not {args.retry!r}")
        failures = asyncio.run(inspect_failures(settings, retry=args.retry))
        print(json.dumps(failures, indent=2, sort_keys=True, default=str))
        return 0
    if args.id is None:
        sys.exit(f"tollgate inspect {args.what} needs an id")
    if settings.embedded_redis:
        sys.exit("inspect reads a shared Redis: set TOLLGATE_REDIS_URL (under `tollgate dev`, "
                 "the URL it prints)")
    redis_or_exit(settings)
    report: dict[str, Any] = asyncio.run(
        inspect_user(settings, args.id) if args.what == "user" else inspect_job(settings, args.id)
    )
    print(json.dumps(report, indent=2, sort_keys=True))
    if missing(report):
        where = (" (a finished job leaves Redis after its flush: GET /jobs/ID reads it from "
                 "SQL)" if args.what == "job" else "")
        print(f"no {args.what} {args.id!r} in Redis{where}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from service.cli.audit import audit

    settings = get_settings()
    if settings.embedded_redis:
        sys.exit("audit reads a shared Redis: set TOLLGATE_REDIS_URL")
    redis_or_exit(settings)
    return asyncio.run(audit(settings, args.user))


def cmd_rebucket(args: argparse.Namespace) -> int:
    from service.cli.rebucket import run_rebucket

    settings = get_settings()
    if settings.embedded_redis:
        sys.exit("rebucket moves keys in a shared Redis: set TOLLGATE_REDIS_URL")
    redis_or_exit(settings)
    return asyncio.run(run_rebucket(settings, args.to, dry_run=args.dry_run))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default (none shown for flags and for None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool) or action.default is \
                argparse.SUPPRESS or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _listen(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help=f"the address {what} listens on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help=f"the port {what} listens on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description=__doc__,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"tollgate {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(
            name, help=text, description=text, formatter_class=_HelpFormatter)
        return made

    dev = command("dev", "API + worker + flusher in one process, on the embedded defaults "
                         "(or the services TOLLGATE_* names)")
    _listen(dev, "the API")
    dev.set_defaults(run=cmd_dev)

    api = command("api", "the API server (TOLLGATE_PUBLIC_URL defaults to --host and --port)")
    _listen(api, "the API")
    api.add_argument("--workers", type=int, default=1, help="server processes")
    api.add_argument("--server", choices=["granian", "uvicorn"], default="granian",
                     help="the ASGI server")
    api.set_defaults(run=cmd_api)

    worker = command("worker", "an RQ worker for the items of one model")
    worker.add_argument("--model", default=None,
                        help="the model to serve: its queue and processor (default: the "
                             "default model)")
    worker.add_argument("--queue", default=None, help="the queue to listen on (default: the "
                        "model's)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    mode = worker.add_mutually_exclusive_group()
    mode.add_argument("--fork", action="store_true",
                      help="a forked work-horse per batch, for processors that leak memory "
                           "(setup() then runs per batch); default: batches run in this "
                           "process and setup() runs once")
    mode.add_argument("--no-fork", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(run=cmd_worker)

    flusher = command("flusher", "flush finished jobs, expire holds and leases")
    flusher.add_argument("--once", action="store_true", help="one pass over every bucket")
    flusher.set_defaults(run=cmd_flusher)
    dispatcher = command("dispatcher", "only the dispatcher the flusher runs: hands waiting "
                         "batches to RQ (docs/scheduling.md)")
    dispatcher.set_defaults(run=cmd_dispatcher)

    command("migrate", "create or upgrade the SQL schema").set_defaults(run=cmd_migrate)

    token = command("token", "print a token signed with TOLLGATE_JWT_SECRET")
    token.add_argument("user_id", help="the user the token is for (its `sub`)")
    token.add_argument("--admin", action="store_true",
                       help="an admin token (role admin): the /admin calls")
    token.add_argument("--ttl", type=parse_ttl, default=3600,
                       help="how long it stays valid: seconds, or 30m, 1h, 7d")
    token.set_defaults(run=cmd_token)

    demo = command("demo", "run a real job end to end against a running API")
    demo.add_argument("--url", default=None,
                      help="API base URL (default: TOLLGATE_PUBLIC_URL)")
    demo.add_argument("--token", default=None,
                      help="bearer token (default: one signed with TOLLGATE_JWT_SECRET for "
                           "--user)")
    demo.add_argument("--user", default="demo-user",
                      help="the user the signed token is for (without --token)")
    demo.add_argument("--items", type=int, default=8, help="generated images in the job")
    demo.set_defaults(run=cmd_demo)

    inspect = command("inspect", "show the Redis keys behind a user or job, or the records "
                                 "SQL refused to flush")
    inspect.add_argument("what", choices=["user", "job", "failures"], help="what to show")
    inspect.add_argument("id", nargs="?", default=None, help="the user or job id")
    inspect.add_argument("--retry", nargs="?", const="all", default=None, metavar="ID",
                         help="failures: write them (or only failure ID) to SQL again, after "
                              "a fix; a written one leaves the list")
    inspect.set_defaults(run=cmd_inspect)

    audit = command("audit", "compare each user's credits in Redis with the SQL ledger and "
                             "job history; exit 1 on any difference")
    audit.add_argument("--user", default=None, metavar="ID",
                       help="check one user (default: every user)")
    audit.set_defaults(run=cmd_audit)

    rebucket = command("rebucket", "move every user's Redis keys to a new TOLLGATE_BUCKETS "
                                   "(API, workers and flusher stopped; only growing)")
    rebucket.add_argument("--to", type=int, required=True, metavar="N",
                          help="the new bucket count (TOLLGATE_BUCKETS is the current one)")
    rebucket.add_argument("--dry-run", action="store_true", help="count, move nothing")
    rebucket.set_defaults(run=cmd_rebucket)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from service.logs import setup_console_logging

    setup_console_logging()
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
