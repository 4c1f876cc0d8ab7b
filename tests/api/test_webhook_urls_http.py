"""Webhook URLs: private, loopback and link-local targets are refused unless allowed, and the
signature is the Standard Webhooks one."""

from __future__ import annotations

import pytest

from service.errors import WebhookUrlNotAllowed
from service.jobs.webhooks import pinned_request, resolve_allowed, sign
from tests.api.conftest import Api
from tests.api.flow import items

REFUSED = ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/hook",
           "http://192.168.0.7/hook", "http://169.254.169.254/latest/meta-data",
           "http://[::1]:8080/hook", "http://[fe80::1]/hook", "http://0.0.0.0/hook",
           "http://[::ffff:127.0.0.1]/hook", "https://100.64.0.1/hook"]


@pytest.mark.parametrize("url", REFUSED)
async def test_a_private_webhook_url_is_refused(embedded_api: Api, url: str) -> None:
    api = embedded_api
    response = await api.client.post("/jobs", headers=api.auth(api.user()), json={
        "items": items(1), "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "webhook_url_not_allowed"


@pytest.mark.parametrize("body", [{"url": "ftp://example.com/x"}, {"url": "http://"},
                                  {"url": "https://example.com/x", "events": ["finished"]},
                                  {"url": "https://example.com/x", "events": []}])
async def test_a_malformed_webhook_is_a_validation_error(embedded_api: Api,
                                                         body: dict[str, object]) -> None:
    api = embedded_api
    response = await api.client.post("/jobs", headers=api.auth(api.user()),
                                      json={"items": items(1), "webhook": body})
    assert response.status_code == 422, response.text
    assert response.json()["code"] in ("validation_error", "webhook_url_not_allowed")


async def test_the_flag_allows_private_addresses() -> None:
    assert await resolve_allowed("http://127.0.0.1:9/hook", True) == "127.0.0.1"
    with pytest.raises(WebhookUrlNotAllowed):
        await resolve_allowed("http://127.0.0.1:9/hook", False)
    with pytest.raises(WebhookUrlNotAllowed):
        await resolve_allowed("http://user:pw@example.com/hook", True)


def test_the_request_goes_to_the_checked_address_under_the_urls_name() -> None:
    url, headers, extensions = pinned_request("https://hooks.example.com:8443/a/b?x=1",
                                              "93.184.215.14")
    assert url == "https://93.184.215.14:8443/a/b?x=1"
    assert headers == {"host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    url, headers, extensions = pinned_request("http://hooks.example.com/", "2606:2800::1")
    assert url == "http://[2606:2800::1]/" and headers == {"host": "hooks.example.com"}
    assert extensions == {}


def test_signature_matches_the_standard_webhooks_vector() -> None:
    # The test vector of the Standard Webhooks reference libraries.
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# IPv6 forms that carry an IPv4 address (docs/webhooks.md): on a NAT64 or 6to4 network
# they reach the embedded address, here loopback and the metadata service.
EMBEDDED_IPV4 = ["http://[::127.0.0.1]/hook", "http://[::7f00:1]/hook",
                 "http://[64:ff9b::127.0.0.1]/hook", "http://[64:ff9b:1::7f00:1]/hook",
                 "http://[2002:7f00:1::1]/hook", "http://[64:ff9b::a9fe:a9fe]/hook",
                 "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook"]


@pytest.mark.parametrize("url", EMBEDDED_IPV4)
async def test_an_ipv6_form_embedding_ipv4_is_refused_even_where_private_is_allowed(
        embedded_api: Api, url: str) -> None:
    api = embedded_api
    response = await api.client.post("/jobs", headers=api.auth(api.user()), json={
        "items": items(1), "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "webhook_url_not_allowed"
    with pytest.raises(WebhookUrlNotAllowed):
        await resolve_allowed(url, True)


@pytest.mark.parametrize("url", ["http://a..b/hook", f"http://{'a' * 64}.example.com/hook"])
@pytest.mark.parametrize("path", ["/jobs", "/rules"])
async def test_a_host_name_idna_cannot_encode_is_422_not_500(
        embedded_api: Api, url: str, path: str) -> None:
    api = embedded_api
    body = {"items": items(1), "webhook": {"url": url}} if path == "/jobs" else {
        "name": "hooked", "webhook": {"url": url}}
    response = await api.client.post(path, headers=api.auth(api.user()), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "webhook_url_not_allowed"
