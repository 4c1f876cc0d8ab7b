"""The published contract over real HTTP: a valid OpenAPI document whose bodies are typed,
whose refusals are problem documents with codes from service.errors, whose answers match
it, and a docs page that works without the internet."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from service.errors import error_table
from tests.api.conftest import Api
from tests.api.flow import create_job, report_item, upload_all

PROBLEM_JSON = "application/problem+json"


async def spec_of(api: Api) -> dict[str, Any]:
    response = await api.client.get("/schema/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items()
            for method, op in item.items()]


async def test_the_openapi_document_validates(embedded_api: Api) -> None:
    spec = await spec_of(embedded_api)
    validate(spec)  # raises on any violation of OpenAPI 3.1
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                  "description": schemes["bearer"]["description"]}}


async def test_every_success_body_is_typed(embedded_api: Api) -> None:
    spec = await spec_of(embedded_api)
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith("2") or status == "204" or path == "/metrics":
                continue
            if "application/json" not in response["content"]:
                assert list(response["content"]) == ["text/event-stream"], (method, path)
                continue
            schema = response["content"]["application/json"]["schema"]
            refs = [s.get("$ref") for s in schema.get("oneOf", [schema])]
            assert refs and all(refs), (method, path, schema)
            for ref in refs:
                name = ref.rsplit("/", 1)[1]
                assert spec["components"]["schemas"][name]["properties"], (method, path)


async def test_every_refusal_is_a_problem_with_codes_from_the_error_table(
        embedded_api: Api) -> None:
    spec = await spec_of(embedded_api)
    table = {(error.status, error.code) for error in error_table()}
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "code"}
    for method, path, op in operations(spec):
        if path == "/metrics":
            continue
        refusals = {s: r for s, r in op["responses"].items() if not s.startswith("2")}
        assert refusals, (method, path)
        for status, response in refusals.items():
            assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
            media = response["content"][PROBLEM_JSON]
            assert media["schema"] == {"$ref": "#/components/schemas/Problem"}
            codes = {example["value"]["code"] for example in media["examples"].values()}
            assert codes and {(int(status), code) for code in codes} <= table, (path, codes)
            assert all(f"`{code}`" in response["description"] for code in codes)


@pytest.mark.parametrize(("method", "path", "codes"), [
    ("POST", "/jobs", {"insufficient_credits", "concurrency_limit", "idempotency_key_reused",
                       "validation_error", "malformed_json", "unauthorized", "not_found"}),
    ("POST", "/jobs/{job_id}/confirm-upload", {"not_found", "uploads_missing"}),
    ("POST", "/jobs/{job_id}/execute", {"not_found", "invalid_transition"}),
    ("POST", "/rules", {"rule_slots_exhausted"}),
    ("POST", "/admin/users", {"user_exists", "forbidden"}),
    ("GET", "/ready", {"not_ready"}),
])
async def test_an_operation_lists_the_codes_it_answers(embedded_api: Api, method: str,
                                                       path: str, codes: set[str]) -> None:
    op = (await spec_of(embedded_api))["paths"][path][method.lower()]
    listed = {example["value"]["code"] for response in op["responses"].values()
              for example in response.get("content", {}).get(PROBLEM_JSON, {})
              .get("examples", {}).values()}
    assert codes <= listed


async def test_headers_are_documented_with_their_bounds(embedded_api: Api) -> None:
    spec = await spec_of(embedded_api)

    def key_header(path: str) -> dict[str, Any]:
        params = spec["paths"][path]["post"]["parameters"]
        found: dict[str, Any] = next(p for p in params if p["name"] == "Idempotency-Key")
        return found

    grant, create = key_header("/admin/users/{user_id}/credits"), key_header("/jobs")
    assert grant["in"] == "header" and grant["required"] is True
    assert create["required"] is False
    for header in (grant, create):
        schema = header["schema"]
        bounds = schema if "maxLength" in schema else header
        text = str(schema)
        assert "200" in str(bounds.get("maxLength", text)), header
        assert "\\x20-\\x7e" in text or "x20" in text, header


async def test_a_credit_grant_without_an_idempotency_key_is_refused(embedded_api: Api) -> None:
    api = embedded_api
    user = api.user()
    await api.admin_create_user(user)
    response = await api.client.post(f"/admin/users/{user}/credits",
                                     json={"amount": 5, "reason": "promo"},
                                     headers=api.auth("root", admin=True))
    assert response.status_code == 422
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["code"] == "validation_error"


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


async def test_the_docs_page_needs_no_other_host(embedded_api: Api) -> None:
    page = await embedded_api.client.get("/schema")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    parser = _Assets()
    parser.feed(page.text)
    assert len(parser.urls) >= 3, parser.urls  # the bundle, the preset, the stylesheet
    assert not re.search(r"https?://(?!tollgate\.dev/problems/)", page.text.split("spec:")[0])
    for url in parser.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = await embedded_api.client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 500, url
    bundle = next(url for url in parser.urls if url.endswith("swagger-ui-bundle.js"))
    assert "javascript" in (await embedded_api.client.get(bundle)).headers["content-type"]


def _conforms(spec: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The answer matches the schema the document gives for this operation and status."""
    documented = spec["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, (method, path, response.status_code)
    media = response.headers.get("content-type", "").split(";")[0]
    content = documented[str(response.status_code)].get("content")
    if content is None:
        assert not response.content
        return
    assert media in content, (method, path, media, list(content))
    schema = {**content[media]["schema"], "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(response.json())
    if media == PROBLEM_JSON:
        codes = {e["value"]["code"] for e in content[media]["examples"].values()}
        assert response.json()["code"] in codes, (method, path, response.json())


async def test_the_answers_of_a_whole_job_match_the_document(embedded_api: Api) -> None:
    api, user = embedded_api, embedded_api.user()
    spec = await spec_of(api)
    auth = api.auth(user)

    async def call(method: str, path: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", auth)
        response = await api.client.request(method, url, headers=headers, **kwargs)
        _conforms(spec, method, path, response)
        return response

    await call("GET", "/me", "/me")
    job = await create_job(api, user, 2)
    job_id = job["id"]
    missing = await call("POST", "/jobs/{job_id}/confirm-upload", f"/jobs/{job_id}/confirm-upload")
    assert missing.json()["code"] == "uploads_missing"
    await upload_all(job)
    await call("POST", "/jobs/{job_id}/confirm-upload", f"/jobs/{job_id}/confirm-upload")
    await call("POST", "/jobs/{job_id}/execute", f"/jobs/{job_id}/execute")
    await report_item(api, job_id, user, 0, ok=True)
    await report_item(api, job_id, user, 1, ok=False)
    done = await call("GET", "/jobs/{job_id}", f"/jobs/{job_id}")
    assert done.json()["status"] == "failed" or done.json()["status"] == "done"
    assert {"ok", "failed"} == {item["status"] for item in done.json()["items"]}
    again = await call("POST", "/jobs/{job_id}/cancel", f"/jobs/{job_id}/cancel")
    assert again.json()["code"] == "invalid_transition"
    await call("GET", "/jobs", "/jobs", params={"limit": 1})
    await call("GET", "/jobs", "/jobs", params={"limit": 0})
    await call("GET", "/jobs/{job_id}", "/jobs/nope")
    created = await call("POST", "/jobs", "/jobs", json={"items": [
        {"name": "a.png", "content_type": "image/png", "size": 10}]},
        headers={**auth, "Idempotency-Key": "k-1"})
    assert created.status_code == 201
    await call("POST", "/jobs/{job_id}/cancel", f"/jobs/{created.json()['id']}/cancel")
    await call("POST", "/jobs", "/jobs", content=b"{not json",
               headers={**auth, "content-type": "application/json"})
    rule = await call("POST", "/rules", "/rules", json={"name": "thumbs", "params": {}})
    await call("GET", "/rules", "/rules")
    await call("GET", "/rules/{rule_id}", f"/rules/{rule.json()['id']}")
    await call("DELETE", "/rules/{rule_id}", f"/rules/{rule.json()['id']}")
    auth = {}
    await call("GET", "/me", "/me")
    await call("GET", "/health", "/health")
    auth = api.auth("root", admin=True)
    await call("POST", "/admin/users/{user_id}/credits", f"/admin/users/{user}/credits",
               json={"amount": 3, "reason": "top-up"}, headers={**auth, "Idempotency-Key": "g1"})
    await call("POST", "/admin/users", "/admin/users", json={"id": user})
