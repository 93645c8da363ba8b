"""The seed guide's approach, reproduced faithfully: the benchmarks' baseline.

This is the openai 0.28-era guide ("Azure completions" with Azure Active
Directory authentication): module-global ``openai.api_type/api_base/
api_version/api_key``, and one shared ``requests.Session`` whose auth is the
guide's ``TokenRefresh``, set as ``openai.requestssession``. Nothing here is
improved on purpose; it is what the app is compared with.
"""

from __future__ import annotations

import time
import typing

import openai
import requests
from azure.identity import DefaultAzureCredential

if typing.TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


class TokenRefresh(requests.auth.AuthBase):

    def __init__(self, credential: TokenCredential, scopes: list[str]) -> None:
        self.credential = credential
        self.scopes = scopes
        self.cached_token: str | None = None

    def __call__(self, req):
        if not self.cached_token or self.cached_token.expires_on - time.time() < 300:
            self.cached_token = self.credential.get_token(*self.scopes)
        req.headers["Authorization"] = f"Bearer {self.cached_token.token}"
        return req


def configure(endpoint: str, api_version: str) -> None:
    default_credential = DefaultAzureCredential()
    token = default_credential.get_token("https://cognitiveservices.azure.com/.default")

    openai.api_base = endpoint
    openai.api_version = api_version
    openai.api_type = "azure_ad"
    openai.api_key = token.token

    session = requests.Session()
    session.auth = TokenRefresh(default_credential, ["https://cognitiveservices.azure.com/.default"])

    openai.requestssession = session


def complete(deployment_id: str, **params):
    return openai.Completion.create(deployment_id=deployment_id, **params)
