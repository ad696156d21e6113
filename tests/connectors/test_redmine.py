"""The redmine connector against the fake Redmine on loopback."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import jsonschema
import pytest

from connectors.base import PermanentError, RetryableError
from connectors.redmine import KEY_LINE, RedmineConnector
from connectors.testing import free_port, serve_app
from connectors.testing.fakes.redmine import SANDBOX_API_KEY, RedmineState, make_redmine_app
from connectors.testing.faults import Faults, with_faults

NEW_ISSUE = {"subject": "Parcel lost", "description": "Order 7 never arrived.", "priority_id": 3}


@pytest.fixture
async def rm():
    """A fake Redmine behind Faults, and a builder of connectors pointed at it."""
    state, faults, made = RedmineState(), Faults(), []
    async with serve_app(with_faults(make_redmine_app(state), faults)) as url:

        def build(**settings) -> RedmineConnector:
            conn = RedmineConnector("issues", {"base_url": url, "api_key": SANDBOX_API_KEY, "project_id": "support",
                                               "timeout": 2, **settings})
            made.append(conn)
            return conn

        yield SimpleNamespace(state=state, faults=faults, url=url, build=build)
        for conn in made:
            await conn.close()


@pytest.mark.parametrize("settings, ok", [
    ({"base_url": "https://redmine.example", "api_key": "k"}, True),
    ({"base_url": "https://redmine.example", "api_key": "k", "project_id": 3, "idempotency_custom_field_id": 9}, True),
    ({"base_url": "https://redmine.example"}, False),
    ({"base_url": "https://redmine.example", "api_key": "k", "apikey": "k"}, False),
], ids=["minimal", "full", "no-key", "unknown-key"])
def test_config_schema(settings, ok):
    """base_url and api_key are required; unknown keys are refused."""
    assert jsonschema.Draft202012Validator(RedmineConnector.config_schema).is_valid(settings) is ok


async def test_create_issue_stores_the_key_in_the_description(rm, ctx):
    """create_issue POSTs {"issue"} to the default project, the key in a description footer."""
    result = await rm.build().call("create_issue", NEW_ISSUE, ctx)
    issue = rm.state.issues[1]
    assert result == {"id": 1, "subject": "Parcel lost", "status": "New", "priority": "High",
                      "updated_on": issue["updated_on"], "url": f"{rm.url}/issues/1", "replayed": False}
    assert issue["description"] == f"Order 7 never arrived.\n\n{KEY_LINE}{ctx.idempotency_key}"
    method, path, headers = rm.state.requests[-1]
    assert (method, path, headers["x-redmine-api-key"]) == ("POST", "/issues.json", SANDBOX_API_KEY)
    assert headers["traceparent"] == ctx.traceparent


async def test_create_issue_stores_the_key_in_the_custom_field(rm, ctx):
    """With idempotency_custom_field_id the key goes into that custom field, next to the input's."""
    payload = {**NEW_ISSUE, "custom_fields": [{"id": 4, "value": "x"}]}
    await rm.build(idempotency_custom_field_id=9).call("create_issue", payload, ctx)
    fields = {f["id"]: f["value"] for f in rm.state.issues[1]["custom_fields"]}
    assert fields == {4: "x", 9: ctx.idempotency_key}
    assert KEY_LINE not in rm.state.issues[1]["description"]


@pytest.mark.parametrize("settings", [{}, {"idempotency_custom_field_id": 9}], ids=["footer", "custom-field"])
async def test_retry_finds_the_issue_of_the_first_attempt(rm, ctx, settings):
    """A retry (attempt 2) whose first attempt did create the issue returns it instead of a second one."""
    conn = rm.build(**settings)
    first = await conn.call("create_issue", NEW_ISSUE, ctx)
    rm.state.issues[1]["status"] = {"id": 5, "name": "Closed"}  # closed issues are found too
    again = await conn.call("create_issue", NEW_ISSUE, dataclasses.replace(ctx, attempt=2))
    assert (again["id"], again["replayed"]) == (first["id"], True)
    assert len(rm.state.issues) == 1


async def test_retry_without_earlier_issue_creates_one(rm, ctx):
    """A retry whose first attempt created nothing (other keys exist) creates the issue."""
    conn = rm.build()
    await conn.call("create_issue", NEW_ISSUE, dataclasses.replace(ctx, idempotency_key="other-key"))
    result = await conn.call("create_issue", NEW_ISSUE, dataclasses.replace(ctx, attempt=2))
    assert (result["id"], result["replayed"]) == (2, False)


async def test_update_note_and_get(rm, ctx):
    """update_issue and add_note take Redmine's 204; get_issue reads the issue back."""
    conn = rm.build()
    await conn.call("create_issue", NEW_ISSUE, ctx)
    assert await conn.call("update_issue", {"id": 1, "status_id": 2, "notes": "on it"}, ctx) == {"id": 1, "updated": True}
    assert await conn.call("add_note", {"id": 1, "notes": "courier called", "private_notes": True}, ctx) == {"id": 1, "updated": True}
    assert [(j["notes"], j["private_notes"]) for j in rm.state.issues[1]["journals"]] == [
        ("on it", False), ("courier called", True)]
    got = await conn.call("get_issue", {"id": 1}, ctx)
    assert (got["status"], got["issue"]["subject"]) == ("In Progress", "Parcel lost")


@pytest.mark.parametrize("action, payload, status, words", [
    ("create_issue", {"subject": "   "}, 422, "HTTP 422: Subject cannot be blank"),
    ("create_issue", {**NEW_ISSUE, "project_id": 404}, 422, "Project cannot be blank"),
    ("update_issue", {"id": 99, "notes": "x"}, 404, "not found"),
], ids=["blank-subject", "unknown-project", "unknown-issue"])
async def test_vendor_errors_are_permanent_with_redmine_words(rm, ctx, action, payload, status, words):
    """422 carries Redmine's "errors" messages; 404 (empty body) a hint; both permanent."""
    with pytest.raises(PermanentError, match=words) as info:
        await rm.build().call(action, payload, ctx)
    assert info.value.status == status


async def test_auth_failure_is_permanent_and_hides_the_key(rm, ctx):
    """A wrong API key: 401, permanent, the key in neither message nor repr."""
    conn = rm.build(api_key="wrong-redmine-key-123")
    with pytest.raises(PermanentError, match="credentials refused") as info:
        await conn.call("get_issue", {"id": 1}, ctx)
    assert info.value.status == 401
    for text in (str(info.value), repr(conn), repr(conn.settings), repr(conn.http)):
        assert "wrong-redmine-key-123" not in text


@pytest.mark.parametrize("status, retry_after", [(503, None), (429, 3.0)], ids=["503", "429-retry-after"])
async def test_vendor_overload_is_retryable(rm, ctx, status, retry_after):
    """503 and 429 are retryable, carrying Retry-After."""
    rm.faults.fail_next(1, status=status, retry_after=retry_after)
    with pytest.raises(RetryableError) as info:
        await rm.build().call("get_issue", {"id": 1}, ctx)
    assert (info.value.status, info.value.retry_after) == (status, retry_after)


async def test_timeout_is_retryable(rm, ctx):
    """No answer within settings.timeout is retryable."""
    rm.faults.slow_next(1, seconds=1)
    with pytest.raises(RetryableError, match="timeout"):
        await rm.build(timeout=0.2).call("get_issue", {"id": 1}, ctx)


async def test_connection_refused_is_retryable(ctx):
    """Nothing listening: retryable."""
    conn = RedmineConnector("issues", {"base_url": f"http://127.0.0.1:{free_port()}", "api_key": "k"})
    with pytest.raises(RetryableError, match="ConnectError"):
        await conn.call("get_issue", {"id": 1}, ctx)
    await conn.close()


@pytest.mark.parametrize("settings, action, payload, field", [
    ({}, "create_issue", {"description": "no subject"}, "subject"),
    ({"project_id": None}, "create_issue", {"subject": "where?"}, "project_id"),
    ({}, "add_note", {"id": 1}, "notes"),
    ({}, "update_issue", {"id": 1}, r"\(payload\)"),
], ids=["no-subject", "no-project", "no-notes", "nothing-to-update"])
async def test_bad_input_is_permanent_without_a_request(rm, ctx, settings, action, payload, field):
    """Bad input fails before any request, naming the field."""
    with pytest.raises(PermanentError, match=field):
        await rm.build(**settings).call(action, payload, ctx)
    assert rm.state.requests == []


async def test_fake_works_mounted_under_a_prefix(ctx):
    """The fake serves under /sandbox/redmine, as the bus mounts it."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    state = RedmineState()
    async with serve_app(Starlette(routes=[Mount("/sandbox/redmine", make_redmine_app(state))])) as url:
        conn = RedmineConnector("issues", {"base_url": f"{url}/sandbox/redmine", "api_key": SANDBOX_API_KEY, "project_id": 1})
        result = await conn.call("create_issue", NEW_ISSUE, ctx)
        await conn.close()
    assert result["url"] == f"{url}/sandbox/redmine/issues/1" and state.issues[1]["subject"] == "Parcel lost"
