"""Access tokens shared by the identity emulator (issues) and the OpenAI emulator (checks).

Tokens are real JWTs (HS256) signed with a secret both servers hold, so the
OpenAI emulator can tell a token the identity endpoint issued, and when it
expires, even when the two run in different processes (pass the same secret).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass

TENANT_ID = "72f988bf-0000-4000-8000-00000000e001"  # a made-up tenant
COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    audience: str
    client_id: str
    expires_on: int


class TokenSigner:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or secrets.token_urlsafe(32)
        self._key = self.secret.encode()

    def issue(self, resource: str, client_id: str, lifetime: float) -> tuple[str, int]:
        now = int(time.time())
        expires_on = int(now + lifetime)
        header = {"alg": "HS256", "typ": "JWT"}
        payload = {
            "aud": resource, "iss": f"https://sts.windows.net/{TENANT_ID}/",
            "iat": now, "nbf": now, "exp": expires_on, "appid": client_id,
            "oid": client_id, "sub": client_id, "tid": TENANT_ID, "jti": uuid.uuid4().hex,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}", expires_on

    def verify(self, token: str) -> Claims | None:
        """The token's claims if this signer issued it, else None (expiry is the caller's check)."""
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                return None
            claims = json.loads(_unb64(payload))
            return Claims(str(claims["aud"]), str(claims["appid"]), int(claims["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
