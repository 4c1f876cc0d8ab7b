"""`tollgate demo`: one real job through a running API, the way a client would run it.

Creates a job of generated PNG images, uploads them to the URLs the API hands out,
confirms, executes, follows the progress until the job ends and prints the settlement.
"""

from __future__ import annotations

import io
import sys
import time
from typing import TextIO

import httpx
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from service.client import Job, ProblemError, Tollgate

POLL_INTERVAL_S = 0.25
BAR_WIDTH = 30


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def demo_image(n: int) -> bytes:
    """A 320x240 picture that differs per item, so the thumbnails can be told apart."""
    hue = (n * 47) % 256
    image = Image.new("RGB", (320, 240), (hue, 255 - hue, (n * 97) % 256))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40 + n * 8, 40, 200 + n * 8, 200), fill=(255 - hue, hue, 128))
    draw.text((12, 12), f"tollgate demo #{n}", fill=(0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def progress_label(job: Job) -> str:
    """The text beside the bar; padded, so a shorter status never leaves a longer one's tail."""
    return f"{job.status:<8}"


def _follow(tg: Tollgate, job_id: str, timeout_s: float, out: TextIO) -> Job:
    """Polls the job under a rich progress bar on `out`: redrawn in place on a terminal,
    printed once when it ends otherwise (a log file gets no carriage returns)."""
    sys.stdout.flush()  # the steps so far, before the bar takes the line
    deadline = time.monotonic() + timeout_s
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=BAR_WIDTH),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=out)) as progress:
        task = progress.add_task(f"{'queued':<8}", total=None)
        while True:
            job = tg.get(job_id)
            progress.update(task, description=progress_label(job), total=job.total_items,
                            completed=job.done_items + job.failed_items)
            if job.finished:
                return job
            if time.monotonic() > deadline:
                raise DemoError(
                    f"job {job_id} is still {job.status} after {timeout_s:.0f} s: is a "
                    "worker running? (`tollgate dev` runs one; otherwise start `tollgate "
                    "worker`)"
                )
            time.sleep(POLL_INTERVAL_S)


def _report(job: Job, names: list[str]) -> None:
    print(f"job {job.id}: {job.status}, {job.done_items} done, {job.failed_items} failed "
          f"of {job.total_items}")
    print(f"settlement: cost {job.cost}, charged {job.charged}, refunded {job.refunded} credits")
    print("results:")
    for item in job.items:
        name = names[item.index] if item.index < len(names) else f"item {item.index}"
        where = item.result_url or f"({item.status}: {item.error or '-'})"
        print(f"  {item.index:>3} {name}: {where}")


def run_demo(
    api_url: str, token: str, *, items: int = 8, timeout_s: float = 120.0
) -> int:
    """Runs the demo through service.client; returns 0 when the job ended done, else 1."""
    files = [(f"demo-{n}.png", demo_image(n), "image/png") for n in range(items)]
    try:
        with Tollgate(api_url, token) as tg:
            created = tg.create(files)  # uploads each image to the URL the API handed out
            print(f"created job {created.id}: {created.total_items} items, cost {created.cost}")
            print(f"uploaded {len(created.uploads)} images")
            tg.confirm(created.id)
            tg.execute(created.id)
            print("executing...")
            job = _follow(tg, created.id, timeout_s, sys.stderr)
    except (DemoError, ProblemError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"demo failed: cannot talk to {api_url}: {exc}", file=sys.stderr)
        return 1
    _report(job, [name for name, _, _ in files])
    return 0 if job.status == "done" else 1
