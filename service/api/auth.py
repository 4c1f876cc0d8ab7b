"""Who is calling: user and admin JWTs, and the per-job callback tokens of workers.

Users and admins carry a JWT (`sub` = user id, `role: admin` for admins). Workers carry a
callback token bound to one job and its owner, so the callback endpoint learns the owner
from the token itself and needs no extra Redis read to check it.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import ImproperlyConfiguredException, NotAuthorizedException
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from service.api.schemas import USER_ID_PATTERN
from service.settings import Settings

# Paths that never need a user token: probes, metrics, the schema, the self-signed local
# storage URLs and the worker callback (which checks its own token). Anchored: Litestar
# matches these as unanchored regexes.
PUBLIC_PATHS = [
    r"^/health",
    r"^/ready",
    r"^/metrics",
    r"^/schema",
    r"^/files/",
    r"^/jobs/[^/]+/callback$",
]


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    admin: bool


def issue_token(secret: str, user_id: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
    now = datetime.now(UTC).replace(microsecond=0)
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + timedelta(seconds=ttl_s)}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm="HS256")


CLOCK_SKEW_S = 30
_USER_ID = re.compile(USER_ID_PATTERN)


class TollgateToken(Token):
    """A user or admin token: 30 s of clock skew on exp, nbf and iat; iat may be absent.

    PyJWT checks the times with the leeway; Litestar's own stricter checks (exp in the
    future, iat in the past, both to the second) are left out. `sub` must be a user id
    (docs/reference.md): anything else could spell another user's Redis keys, so it is a 401.
    """

    @classmethod
    def decode_payload(cls, encoded_token: str, secret: str, algorithms: list[str],
                       issuer: str | Sequence[str] | None = None,
                       audience: str | Sequence[str] | None = None,
                       options: Any = None) -> Any:
        return jwt.decode(encoded_token, key=secret, algorithms=algorithms,
                          issuer=issuer, audience=audience, options=options,
                          leeway=CLOCK_SKEW_S)

    @classmethod
    def _decode_datetime_claim(cls, payload: dict[str, Any], claim: str) -> datetime:
        if claim == "iat" and claim not in payload:
            return datetime.now(UTC)
        return super()._decode_datetime_claim(payload, claim)

    def __post_init__(self) -> None:
        if not isinstance(self.sub, str) or not _USER_ID.match(self.sub):
            raise ImproperlyConfiguredException("sub is not a valid user id")


class CachedJWTAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Verifies each token string once per process, then serves it from memory until `exp`.

    A token's validity depends only on its bytes and the clock, so the cache cannot accept
    anything the full check would refuse; it saves the signature check on every request.
    """

    MAX_TOKENS = 50_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verified: OrderedDict[str, tuple[float, AuthenticationResult]] = OrderedDict()

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]
                                   ) -> AuthenticationResult:
        # Litestar takes whatever follows the first space, so `Basic <jwt>` passed; only
        # the Bearer scheme (any case, RFC 9110) carries a token here.
        scheme, _, encoded_token = (connection.headers.get(self.auth_header) or "").partition(" ")
        if scheme.lower() != "bearer" or not encoded_token.strip():
            raise NotAuthorizedException("a Bearer token is required")
        return await self.authenticate_token(encoded_token.strip(), connection)

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        cached = self._verified.get(encoded_token)
        if cached is not None:
            if time.time() < cached[0]:
                return cached[1]
            del self._verified[encoded_token]
        result = await super().authenticate_token(encoded_token, connection)
        self._verified[encoded_token] = (result.auth.exp.timestamp() + CLOCK_SKEW_S, result)
        if len(self._verified) > self.MAX_TOKENS:
            self._verified.popitem(last=False)
        return result


def make_jwt_auth(
    settings: Settings, secret: str, provision: Callable[[str], Awaitable[None]] | None = None
) -> JWTAuth[Principal, Token]:
    """JWT auth for every route but PUBLIC_PATHS; RS256 when a public key is configured."""

    async def retrieve_user(
        token: Token, _connection: ASGIConnection[Any, Any, Any, Any]
    ) -> Principal:
        # A valid token for an unknown user provisions it (free plan, signup credits);
        # without a hook the app provisions lazily, when a script finds no user.
        if provision is not None:
            await provision(token.sub)
        return Principal(user_id=token.sub, admin=token.extras.get("role") == "admin")

    if settings.jwt_public_key:
        key, algorithm = settings.jwt_public_key, "RS256"
    else:
        key, algorithm = secret, "HS256"
    return JWTAuth[Principal, Token](
        token_secret=key,
        algorithm=algorithm,
        retrieve_user_handler=retrieve_user,
        exclude=PUBLIC_PATHS,
        # Litestar skips HEAD too by default: a HEAD handler on a user route would run with
        # no user and uncounted. OPTIONS stays open (CORS preflight; Litestar's own handler).
        exclude_http_methods=["OPTIONS"],
        require_claims=["exp", "sub", *(["aud"] if settings.jwt_audience else [])],
        accepted_audiences=[settings.jwt_audience] if settings.jwt_audience else None,
        authentication_middleware_class=CachedJWTAuthenticationMiddleware,
        token_cls=TollgateToken,
    )
