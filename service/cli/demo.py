"""`tollgate demo`: one real job through a running API, the way a client would run it.

Creates a job of generated PNG images, uploads them to the URLs the API hands out,
confirms, executes, follows the progress until the job ends and prints the settlement.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any, TextIO
from urllib.parse import urljoin

import httpx
from PIL import Image, ImageDraw

from service.state.fsm import TERMINAL

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


def progress_bar(job: dict[str, Any]) -> str:
    total = int(job.get("total_items") or 0)
    finished = int(job.get("done_items") or 0) + int(job.get("failed_items") or 0)
    filled = BAR_WIDTH * finished // total if total else 0
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"[{bar}] {finished}/{total} {job.get('status', '?')}"


def _checked(response: httpx.Response, step: str, expected: int) -> dict[str, Any]:
    if response.status_code != expected:
        try:
            problem = response.json()
            why = f"{problem.get('code', '')} {problem.get('detail') or problem.get('title', '')}"
        except ValueError:
            why = response.text[:300]
        raise DemoError(f"{step} answered {response.status_code}: {why.strip()}")
    body: dict[str, Any] = response.json()
    return body


def _upload_all(api_url: str, uploads: list[dict[str, Any]], images: list[bytes]) -> None:
    # A separate client: presigned storage URLs must not get the API's Authorization header.
    with httpx.Client(timeout=60) as storage:
        for upload in uploads:
            url = urljoin(api_url + "/", upload["url"])
            response = storage.request(
                upload.get("method", "PUT"), url, content=images[upload["index"]],
                headers=upload.get("headers") or {},
            )
            if not response.is_success:
                raise DemoError(
                    f"upload of item {upload['index']} answered {response.status_code}: "
                    f"{response.text[:200]}"
                )


def _follow(
    api: httpx.Client, job_id: str, timeout_s: float, out: TextIO
) -> dict[str, Any]:
    sys.stdout.flush()  # the steps so far, before the bar starts redrawing its line
    deadline = time.monotonic() + timeout_s
    while True:
        job = _checked(api.get(f"/jobs/{job_id}"), "GET /jobs/{id}", 200)
        out.write("\r" + progress_bar(job))
        out.flush()
        if job.get("status") in TERMINAL:
            out.write("\n")
            return job
        if time.monotonic() > deadline:
            out.write("\n")
            raise DemoError(
                f"job {job_id} is still {job.get('status')} after {timeout_s:.0f} s: is a "
                "worker running? (`tollgate dev` runs one; otherwise start `tollgate worker`)"
            )
        time.sleep(POLL_INTERVAL_S)


def _report(job: dict[str, Any], names: list[str]) -> None:
    print(
        f"job {job['id']}: {job['status']}, {job.get('done_items', 0)} done, "
        f"{job.get('failed_items', 0)} failed of {job.get('total_items', 0)}"
    )
    print(
        f"settlement: cost {job.get('cost')}, charged {job.get('charged')}, "
        f"refunded {job.get('refunded')} credits"
    )
    print("results:")
    for item in job.get("items") or []:
        index = int(item["index"])
        name = names[index] if index < len(names) else f"item {index}"
        where = item.get("result_url") or f"({item.get('status')}: {item.get('error') or '-'})"
        print(f"  {index:>3} {name}: {where}")


def run_demo(
    api_url: str, token: str, *, items: int = 8, timeout_s: float = 120.0
) -> int:
    """Runs the demo; returns 0 when the job ended done, 1 otherwise."""
    api_url = api_url.rstrip("/")
    names = [f"demo-{n}.png" for n in range(items)]
    images = [demo_image(n) for n in range(items)]
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=api_url, headers=headers, timeout=30) as api:
            created = _checked(api.post("/jobs", json={"items": [
                {"name": name, "content_type": "image/png", "size": len(data)}
                for name, data in zip(names, images, strict=True)
            ]}), "POST /jobs", 201)
            job_id = created["id"]
            print(f"created job {job_id}: {created['total_items']} items, cost {created['cost']}")
            _upload_all(api_url, created["uploads"], images)
            print(f"uploaded {len(created['uploads'])} images")
            _checked(api.post(f"/jobs/{job_id}/confirm-upload"), "confirm-upload", 200)
            _checked(api.post(f"/jobs/{job_id}/execute"), "execute", 202)
            print("executing...")
            job = _follow(api, job_id, timeout_s, sys.stderr)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"demo failed: cannot talk to {api_url}: {exc}", file=sys.stderr)
        return 1
    _report(job, names)
    return 0 if job["status"] == "done" else 1
