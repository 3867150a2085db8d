"""Masking the client's credentials on its flow: what mitmweb, saved flows and flow lines show."""

from __future__ import annotations

import pytest
from mitmproxy.test import tflow

from addon.mitm.flows import client_request, mask_credentials, mask_flow, mask_query_credentials


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/v1beta/models/g:generateContent", "/v1beta/models/g:generateContent"),
        ("/v1beta/models/g:generateContent?key=SECRET", "/v1beta/models/g:generateContent?key=***"),
        ("/m?alt=sse&key=SECRET&x=1", "/m?alt=sse&key=***&x=1"),
        ("/m?KEY=SECRET&api_key=SECRET2", "/m?KEY=***&api_key=***"),
        ("/m?%6Bey=SECRET", "/m?%6Bey=***"),
        ("/m?keys=1&monkey=2&key", "/m?keys=1&monkey=2&key"),
        ("/m?access_token=ya29.SECRET&Key=SECRET", "/m?access_token=***&Key=***"),
    ],
)
def test_query_credentials_are_masked_and_nothing_else_changes(path: str, shown: str) -> None:
    assert mask_query_credentials(path) == shown


def test_headers_keep_their_scheme_and_lose_their_secret() -> None:
    fields = ((b"Authorization", b"Bearer SECRET"), (b"x-api-key", b"SECRET"), (b"accept", b"*/*"))
    assert mask_credentials(fields) == (
        (b"Authorization", b"Bearer ***"),
        (b"x-api-key", b"***"),
        (b"accept", b"*/*"),
    )


def test_the_flow_shows_masks_and_the_request_keeps_what_was_sent() -> None:
    flow = tflow.tflow()
    flow.request.path = "/v1beta/models/g:generateContent?key=SECRET"
    flow.request.headers["x-goog-api-key"] = "SECRET"
    sent = mask_flow(flow)
    assert "SECRET" not in flow.request.path and flow.request.headers["x-goog-api-key"] == "***"
    request = client_request(flow, sent)
    assert request.path.endswith("?key=SECRET") and request.header(b"x-goog-api-key") == b"SECRET"
