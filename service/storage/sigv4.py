"""S3 SigV4 query-string presigning, without botocore's per-call machinery."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit


class SigV4Presigner:
    """S3 SigV4 query-string presigning without botocore's per-call machinery.

    boto3's generate_presigned_url costs about 1 ms per URL (a 1000-item job would spend a
    second in it); this does the same signature in tens of microseconds, with the signing
    key derived once per day. Tests check it against boto3's output byte for byte.
    """

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str,
                 secret_key: str) -> None:
        parts = urlsplit(endpoint)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        host = parts.hostname or ""
        self._host = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/") + "/" + bucket
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._day = ""
        self._signing_key = b""
        # Every URL signed in the same second with the same TTL shares its query string.
        self._second = -1
        self._stamp = self._today = ""
        self._queries: dict[tuple[int, str], str] = {}

    def _key_for(self, day: str) -> bytes:
        if day != self._day:
            k = hmac.new(f"AWS4{self._secret_key}".encode(), day.encode(), hashlib.sha256)
            for part in (self._region, "s3", "aws4_request"):
                k = hmac.new(k.digest(), part.encode(), hashlib.sha256)
            self._day, self._signing_key = day, k.digest()
        return self._signing_key

    def presign(self, method: str, key: str, ttl_s: int, content_type: str | None = None,
                now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        second = int(now.timestamp())
        if second != self._second:
            self._second, self._queries = second, {}
            self._stamp, self._today = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        stamp, day = self._stamp, self._today
        scope = f"{day}/{self._region}/s3/aws4_request"
        headers = [("host", self._host)]
        if content_type is not None:
            headers.insert(0, ("content-type", " ".join(content_type.split())))
        signed = ";".join(name for name, _ in headers)
        query = self._queries.get((ttl_s, signed))
        if query is None:
            query = self._queries[(ttl_s, signed)] = "&".join(
                f"{name}={quote(value, safe='-_.~')}"
                for name, value in (
                    ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
                    ("X-Amz-Credential", f"{self._access_key}/{scope}"),
                    ("X-Amz-Date", stamp),
                    ("X-Amz-Expires", str(ttl_s)),
                    ("X-Amz-SignedHeaders", signed),
                )
            )
        path = quote(f"{self._base_path}/{key}", safe="/~")
        canonical = "\n".join([
            method, path, query, "".join(f"{n}:{v}\n" for n, v in headers), signed,
            "UNSIGNED-PAYLOAD",
        ])
        to_sign = "\n".join([
            "AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest(),
        ])
        signature = hmac.new(self._key_for(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self._origin}{path}?{query}&X-Amz-Signature={signature}"
