"""tollgate's Python client, sync and async, on httpx. It imports nothing of the server
(an import-linter contract keeps it so): copy or vendor it freely.

Every call is written once, in aio.py; sync.py is generated from it, and codes.py from the
server's table of problem codes (tests/client/regenerate.py writes both).

    from service.client import Tollgate
    with Tollgate("http://127.0.0.1:8000", token) as tg:
        job = tg.run(["cat.png", "dog.png"])
"""

from service.client.aio import AsyncTollgate
from service.client.problems import (
    ConcurrencyLimit,
    InsufficientCredits,
    InvalidTransition,
    NotFound,
    ProblemError,
    Unauthorized,
    Unavailable,
    UploadsMissing,
    ValidationFailed,
)
from service.client.sync import Tollgate
from service.client.views import Grant, Item, Job, JobEvent, JobPage, Upload
from service.client.webhooks import WebhookVerificationError, sign_webhook, verify_webhook

__all__ = [
    "AsyncTollgate", "ConcurrencyLimit", "Grant", "InsufficientCredits", "InvalidTransition",
    "Item",
    "Job", "JobEvent", "JobPage", "NotFound", "ProblemError", "Tollgate", "Unauthorized",
    "Unavailable", "Upload", "UploadsMissing", "ValidationFailed", "WebhookVerificationError",
    "sign_webhook", "verify_webhook",
]
