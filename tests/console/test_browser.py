"""The console in a real browser (Debian's chromium through Playwright) against a real
`turnout serve`: sign in, see the endpoint, deploy v2 from the page and watch it complete live,
roll back from the page and watch v1 serve again; cancel; aliases; a wrong key's message."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Locator, expect

from tests.console.conftest import Shot
from tests.console.harness import ENDPOINT, ORG, STUCK_ENDPOINT, V1, ConsoleEnv

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROLLOUT_SECONDS = 180


def sign_in(page: Page, env: ConsoleEnv, key: str | None = None, org: str = ORG) -> None:
    page.goto(env.server.url + "/console")
    form = page.get_by_test_id("signin-form")
    form.locator("input[name=org]").fill(org)
    form.locator("input[name=key]").fill(key or env.management_key)
    form.get_by_role("button", name="Sign in").click()


def watch_until_done(page: Page, expected: str) -> list[str]:
    """Reads the rollout's state off the page as it changes (the page polls; nothing here
    reloads it) and returns every state it showed, in order."""
    badge = page.get_by_test_id("rollout-state").locator(".badge")
    seen: list[str] = []
    deadline = time.monotonic() + ROLLOUT_SECONDS
    while time.monotonic() < deadline:
        state = badge.get_attribute("data-state") or ""
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in ("complete", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert seen and seen[-1] == expected, seen
    return seen


def same_document(page: Page) -> bool:
    return bool(page.evaluate("window.__sameDocument === true"))


def serving(locator: Locator | Page, version: int) -> None:
    expect(locator.get_by_test_id("serving-version").first).to_have_text(
        re.compile(rf"^v{version}\b"), timeout=30_000
    )


@pytest.mark.timeout(600)
def test_deploy_and_roll_back_from_the_console(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    env = console_env
    assert env.deploy_and_wait("v1")["response"]["rollout_status"] == "complete"

    sign_in(page, env)
    card = page.get_by_test_id(f"endpoint-{ENDPOINT}")
    serving(card, 1)
    expect(card.get_by_test_id("replica-count")).to_have_text(re.compile(r"^1/1 ready"))
    expect(page.get_by_test_id(f"endpoint-{STUCK_ENDPOINT}")).to_contain_text("nothing yet")
    shot(page, "01-endpoints")
    # Set once; a reload anywhere below would lose it.
    page.evaluate("window.__sameDocument = true")

    page.get_by_role("link", name="Models").click()
    v2 = page.get_by_test_id("version-2")
    expect(v2).to_contain_text("done")
    expect(v2.locator("code")).to_have_text(re.compile(r"^sha256:[0-9a-f]{12}$"))
    expect(v2.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    shot(page, "02-models")

    v2.get_by_test_id("deploy-2").click()
    form = page.get_by_test_id("deploy-form")
    form.locator("select[name=endpoint]").select_option(ENDPOINT)
    with page.expect_request(re.compile(":deployModel$")) as submitted:
        form.get_by_test_id("deploy-submit").click()
    # The default policy (surge) sends the published body, with no `rollout` object.
    assert submitted.value.post_data_json == {"model": env.versions["v2"]}
    expect(page.get_by_test_id("rollout-page")).to_contain_text("Rollout of v2")
    expect(page.get_by_test_id("rollout-state").locator(".badge")).to_have_attribute(
        "data-state", re.compile("not_started|in_progress")
    )
    # A surge rollout reports no traffic share, so the step controls of DESIGN §8 stay hidden.
    assert page.get_by_test_id("pause").count() == 0
    assert page.get_by_test_id("traffic-split").count() == 0
    shot(page, "03-rollout-live")
    seen = watch_until_done(page, "complete")
    assert seen[0] in ("not_started", "in_progress"), seen  # it was watched, not reloaded
    serving(page, 2)
    expect(page.get_by_test_id("steps")).to_contain_text("done")
    assert page.get_by_test_id("events").locator("li").count() >= 3
    assert page.get_by_test_id("cancel").count() == 0  # a finished rollout cannot be cancelled
    shot(page, "04-rollout-complete")
    assert env.answering_version() == "2"

    first = page.url
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("rollback").click()
    page.wait_for_url(lambda url: url != first and "#/deployments/" in url)
    expect(page.get_by_test_id("rollout-page")).to_contain_text("Rollout of v1")
    watch_until_done(page, "complete")
    serving(page, 1)
    shot(page, "05-rollback-complete")
    assert env.answering_version() == "1"

    page.get_by_test_id("rollout-page").get_by_role("link", name=ENDPOINT).click()
    endpoint = page.get_by_test_id("endpoint-page")
    serving(endpoint, 1)
    expect(page.get_by_test_id("history").locator("tbody tr")).to_have_count(3)
    # The published API has no metrics route or canary fields yet: nothing of them shows.
    page.wait_for_timeout(1000)
    assert page.get_by_test_id("metrics").count() == 0
    assert page.get_by_test_id("traffic-split").count() == 0
    shot(page, "06-endpoint")
    assert same_document(page)


def test_deploy_from_the_endpoint_page_and_cancel_while_it_waits(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    env = console_env
    sign_in(page, env)
    page.get_by_role("link", name=STUCK_ENDPOINT).click()
    page.get_by_test_id("open-deploy").click()
    form = page.get_by_test_id("deploy-form")
    form.locator("select[name=version]").select_option(env.versions["v1"])
    shot(page, "07-endpoint-deploy-form")
    form.get_by_test_id("deploy-submit").click()
    expect(page.get_by_test_id("rollout-page")).to_contain_text("Rollout of v1")
    deployment = page.url.rsplit("/", 1)[1]

    page.get_by_role("link", name="Endpoints").click()
    card = page.get_by_test_id(f"endpoint-{STUCK_ENDPOINT}")
    expect(card.get_by_test_id("rollout-in-progress")).to_contain_text("rollout to v1")
    card.get_by_role("link", name="rollout to v1").click()
    # Its replica never gets ready: the rollout waits before the switch, where cancel applies.
    expect(page.get_by_test_id("rollout-step")).to_have_text(re.compile("^(starting|warming)$"))
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("cancel").click()
    watch_until_done(page, "cancelled")
    expect(page.get_by_test_id("rollout-error")).to_contain_text("cancel")
    shot(page, "08-rollout-cancelled")
    with env.api() as api:
        body = api.get(f"{V1}/deployments/{deployment}").json()
    assert body["response"]["rollout_status"] == "cancelled"


def test_aliases_are_set_and_moved_from_the_models_page(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    env = console_env
    sign_in(page, env)
    page.get_by_role("link", name="Models").click()
    page.get_by_test_id("aliases-1").click()
    editor = page.get_by_test_id("alias-editor")
    editor.locator("input[name=aliases]").fill("production, v1-stable")
    editor.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("version-1").locator(".chip")).to_have_text(
        ["production", "v1-stable"]
    )
    page.get_by_test_id("aliases-2").click()
    page.get_by_test_id("alias-editor").locator("select").select_option(
        label="production (now on v1)"
    )
    expect(page.get_by_test_id("version-2").locator(".chip")).to_have_text(["production"])
    expect(page.get_by_test_id("version-1").locator(".chip")).to_have_text(["v1-stable"])
    shot(page, "09-aliases")

    # A bad alias shows the API's own message.
    page.get_by_test_id("aliases-1").click()
    editor = page.get_by_test_id("alias-editor")
    editor.locator("input[name=aliases]").fill("Bad_Alias")
    editor.get_by_role("button", name="Save").click()
    expect(editor.locator(".error-note")).to_contain_text("Aliases not changed")
    with env.api() as api:
        names = {
            v["name"].rsplit("/", 1)[1]: v["response"]["version_aliases"]
            for v in api.get(f"{V1}/orgs/{ORG}/models/tiny-llama/versions").json()["model_versions"]
        }
    assert names == {"1": ["v1-stable"], "2": ["production"]}


def test_a_wrong_key_or_org_shows_the_servers_message(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    env = console_env
    sign_in(page, env, key="tok_not-a-real-key")
    error = page.get_by_test_id("signin-error")
    expect(error).to_contain_text("Key not accepted.")
    expect(error).to_contain_text("not a valid management key")
    assert page.evaluate("sessionStorage.length") == 0
    shot(page, "00-signin-wrong-key")

    page.get_by_test_id("signin-form").locator("input[name=org]").fill("other-org")
    page.get_by_test_id("signin-form").locator("input[name=key]").fill(env.management_key)
    page.get_by_role("button", name="Sign in").click()
    expect(error).to_contain_text("Wrong org for this key.")
    expect(error).to_contain_text("cannot act on org 'other-org'")

    page.get_by_test_id("signin-form").locator("input[name=org]").fill("nope")
    page.get_by_role("button", name="Sign in").click()
    expect(error).to_contain_text("org 'nope' does not exist")

    page.get_by_test_id("signin-form").locator("input[name=org]").fill(ORG)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("org-name")).to_have_text(ORG)
    # The key lives in this tab's session storage only.
    assert page.evaluate("Object.values(sessionStorage)").count(env.management_key) == 1
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []


def test_key_revoked_while_signed_in_returns_to_sign_in(
    console_env: ConsoleEnv, page: Page
) -> None:
    env = console_env
    key = env.server.cli("admin", "key", "create", "--org", ORG, "--kind", "management").stdout
    key = key.strip()
    sign_in(page, env, key=key)
    expect(page.get_by_test_id(f"endpoint-{ENDPOINT}")).to_be_visible()
    listed = env.server.cli("admin", "key", "list", "--org", ORG, "--json").stdout
    keys = json.loads(listed)["keys"]
    # Listed by an 8-character prefix, which for these random keys names one key.
    (mine,) = [k for k in keys if key.startswith(k["prefix"]) and k["kind"] == "management"]
    env.server.cli("admin", "key", "revoke", mine["id"])
    expect(page.get_by_test_id("signin-error")).to_contain_text("revoked", timeout=20_000)
    assert page.evaluate("sessionStorage.length") == 0


def test_console_calls_only_the_management_api(console_env: ConsoleEnv, page: Page) -> None:
    env = console_env
    paths: list[str] = []
    page.on("request", lambda r: paths.append(httpx.URL(r.url).path))
    sign_in(page, env)
    expect(page.get_by_test_id(f"endpoint-{ENDPOINT}")).to_be_visible()
    page.get_by_role("link", name="Models").click()
    expect(page.get_by_test_id("version-1")).to_be_visible()
    calls = [p for p in paths if not p.startswith("/console")]
    assert calls and all(p.startswith("/management/v1/") for p in calls), calls


@pytest.mark.timeout(300)
def test_progressive_fields_light_up_when_the_api_reports_them(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    """DESIGN §8's status fields (traffic share, gates, canary steps), per-replica placement
    and the per-version metrics route are not served yet. Here the browser adds them to the
    real server's answers, so the console's side is checked, and pictured, before they land."""
    env = console_env
    with env.api() as api:
        resp = api.post(
            f"{V1}/endpoints/{STUCK_ENDPOINT}:deployModel", json={"model": env.versions["v2"]}
        )
    assert resp.status_code == 200, resp.text
    deployment = resp.json()["name"]
    posted: list[str] = []
    samples = iter(range(1000))

    def canary_status(route: Route) -> None:
        if route.request.method != "GET":
            # :pause and the like do not exist yet: record the call, answer as they will.
            posted.append(f"{route.request.method} {httpx.URL(route.request.url).path}")
            route.fulfill(json={"name": deployment, "done": False})
            return
        answer = route.fetch()
        body = answer.json()
        if body.get("name") == deployment:
            body["response"].update(step="canary", traffic_percent=25, gates=GATES)
            body["response"]["events"].append(
                {"at": time.time(), "step": "canary", "message": "traffic 25% to v2; judging"}
            )
        route.fulfill(response=answer, json=body)

    def with_replicas(route: Route) -> None:
        answer = route.fetch()
        body = answer.json()
        body["replicas"] = {"ready": 1, "total": 2, "items": [
            {"replica_id": "r-7f3a", "deployment_id": deployment, "version_id": 2,
             "node": "127.0.0.2", "gpus": [0, 1], "state": "starting"},
            {"replica_id": "r-11c2", "deployment_id": SERVING_ID, "version_id": 1,
             "node": "127.0.0.3", "gpus": [2, 3], "state": "ready"},
        ]}  # fmt: skip
        route.fulfill(response=answer, json=body)

    def metrics(route: Route) -> None:
        n = next(samples)
        route.fulfill(json={"window_seconds": 60, "at": time.time(), "versions": [
            {"version_id": 1, "requests_per_second": 40 - n, "error_rate": 0.002,
             "ttft_p50_ms": 30 + n, "ttft_p95_ms": 80 + 2 * n},
            {"version_id": 2, "requests_per_second": 8 + 3 * n, "error_rate": 0.001 * n,
             "ttft_p50_ms": 28 + n, "ttft_p95_ms": 75 + n},
        ]})  # fmt: skip

    try:
        page.route(re.compile(r"/management/v1/deployments/[^/]+$"), canary_status)
        page.route(re.compile(rf"/management/v1/endpoints/{STUCK_ENDPOINT}$"), with_replicas)
        page.route(re.compile(r"/management/v1/endpoints/[^/]+/metrics$"), metrics)
        sign_in(page, env)
        card = page.get_by_test_id(f"endpoint-{STUCK_ENDPOINT}")
        expect(card.get_by_test_id("traffic-split")).to_contain_text("v2 25%")
        expect(card.locator(".replica-dots li")).to_have_count(2)

        page.goto(f"{env.server.url}/console/#/deployments/{deployment}")
        expect(page.get_by_test_id("rollout-step")).to_have_text("canary")
        expect(page.get_by_test_id("traffic-split")).to_contain_text("v2 25%")
        expect(page.get_by_test_id("gates").locator("tbody tr")).to_have_count(len(GATES))
        expect(page.get_by_test_id("gates")).to_contain_text("fail")
        expect(page.get_by_test_id("promote")).to_be_visible()
        shot(page, "10-preview-canary-rollout")
        page.get_by_test_id("pause").click()
        expect(page.get_by_test_id("pause")).to_be_enabled()
        assert posted == [f"POST /management/v1/deployments/{deployment}:pause"]

        page.goto(f"{env.server.url}/console/#/endpoints/{STUCK_ENDPOINT}")
        expect(page.get_by_test_id("replicas").locator("tbody tr")).to_have_count(2)
        expect(page.get_by_test_id("replicas")).to_contain_text("127.0.0.2")
        # Two polls of the metrics route draw lines rather than points.
        expect(page.get_by_test_id("chart-rps").locator("polyline")).to_have_count(
            2, timeout=15_000
        )
        shot(page, "11-preview-endpoint-canary")

        # The policy form sends DESIGN §8's `rollout` object for a non-default strategy.
        page.get_by_role("link", name="Models").click()
        page.get_by_test_id("deploy-2").click()
        form = page.get_by_test_id("deploy-form")
        form.locator("select[name=endpoint]").select_option(STUCK_ENDPOINT)
        policy = form.get_by_test_id("policy-form")
        policy.locator("select[name=strategy]").select_option("canary")
        policy.get_by_label("max error rate").fill("0.02")
        policy.get_by_label("golden prompt").fill("2+2?")
        policy.get_by_label("expect regex").fill(r"\b4\b")
        shot(page, "12-preview-canary-policy-form")
        with page.expect_request(re.compile(":deployModel$")) as submitted:
            form.get_by_test_id("deploy-submit").click()
        assert submitted.value.post_data_json == {"model": env.versions["v2"], "rollout": {
            "strategy": "canary",
            "steps": [{"traffic_percent": 10, "hold_seconds": 60},
                      {"traffic_percent": 50, "hold_seconds": 120}],
            "sticky": "none",
            "gates": {"max_error_rate": 0.02, "golden_prompts": [
                {"messages": [{"role": "user", "content": "2+2?"}], "expect_regex": r"\b4\b"}]},
            "on_gate_failure": "rollback",
        }}  # fmt: skip
        # Until the server takes policies it refuses the body with its own message.
        expect(form.locator(".error-note").or_(page.get_by_test_id("rollout-page"))).to_be_visible()
    finally:
        with env.api() as api:
            listed = api.get(f"{V1}/endpoints/{STUCK_ENDPOINT}/deployments").json()
            for op in listed["deployments"]:
                if not op["done"]:
                    api.post(f"{V1}/endpoints/{STUCK_ENDPOINT}/deployments/{op['name']}:cancel")


SERVING_ID = "0b5e1c2a-3f4d-4e5f-8a9b-0c1d2e3f4a5b"
GATES = [
    {"name": "min_requests", "threshold": 50, "reading": 212, "verdict": "pass"},
    {"name": "max_error_rate", "threshold": 0.02, "reading": 0.004, "verdict": "pass"},
    {"name": "max_ttft_p95_ratio", "threshold": 1.5, "reading": 1.71, "verdict": "fail"},
]
