"""The console in a real browser (Debian's chromium through Playwright) against a real
`turnout serve`: sign in, see the endpoint, deploy v2 from the page and watch it complete live,
roll back from the page and watch v1 serve again; a canary under traffic watched, paused,
resumed and promoted from its page; a version failing its golden prompt rolled back by itself;
cancel; aliases; a wrong key's message."""

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
from turnout.demo.load import ClientLoop

if TYPE_CHECKING:
    from playwright.sync_api import Page

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
    # The metrics route charts the serving version (a surge has no traffic split).
    expect(page.get_by_test_id("chart-rps").locator(".legend")).to_contain_text("v1")
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


class Traffic(ClientLoop):
    """Inference requests against the gateway in a thread, so that a canary has traffic to
    split and judge and the endpoint's metrics have something to draw."""

    def __init__(self, env: ConsoleEnv) -> None:
        super().__init__(threads=1, join_timeout=60)
        self.env = env
        self.answers: list[tuple[int, str]] = []  # (status, x-turnout-version)

    def run(self, index: int) -> None:
        with self.env.server.http(self.env.inference_key) as http:
            while not self.stopping.is_set():
                resp = http.post(
                    "/v1/completions",
                    json={"model": ENDPOINT, "prompt": "Hello", "max_tokens": 2},
                    timeout=60,
                )
                self.answers.append((resp.status_code, resp.headers.get("x-turnout-version", "")))
                time.sleep(0.05)


def canary_deploy_form(
    page: Page, env: ConsoleEnv, traffic_percent: int, hold_seconds: int
) -> tuple[Locator, Locator]:
    """Signs in and opens the Models page's deploy form for v2 onto the endpoint, with a
    one-step canary policy; returns the form and its policy fieldset."""
    sign_in(page, env)
    page.get_by_role("link", name="Models").click()
    page.get_by_test_id("deploy-2").click()
    form = page.get_by_test_id("deploy-form")
    form.locator("select[name=endpoint]").select_option(ENDPOINT)
    policy = form.get_by_test_id("policy-form")
    policy.locator("select[name=strategy]").select_option("canary")
    policy.get_by_role("button", name="remove").last.click()  # keep only the first step
    policy.get_by_label("traffic %").fill(str(traffic_percent))
    policy.get_by_label("hold s").fill(str(hold_seconds))
    return form, policy


def serve_v1(env: ConsoleEnv) -> None:
    if env.answering_version() != "1":
        assert env.deploy_and_wait("v1")["response"]["rollout_status"] == "complete"


@pytest.mark.timeout(600)
def test_a_canary_is_watched_paused_resumed_and_promoted_from_the_console(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    env = console_env
    serve_v1(env)
    with Traffic(env) as traffic:
        form, policy = canary_deploy_form(page, env, traffic_percent=30, hold_seconds=3600)
        policy.get_by_label("max error rate").fill("0.5")
        shot(page, "10-canary-policy-form")
        with page.expect_request(re.compile(":deployModel$")) as submitted:
            form.get_by_test_id("deploy-submit").click()
        assert submitted.value.post_data_json == {"model": env.versions["v2"], "rollout": {
            "strategy": "canary",
            "steps": [{"traffic_percent": 30, "hold_seconds": 3600}],
            "sticky": "none",
            "gates": {"max_error_rate": 0.5},
            "on_gate_failure": "rollback",
        }}  # fmt: skip
        rollout = page.get_by_test_id("rollout-page")
        expect(rollout).to_contain_text("Rollout of v2")
        # The real controller starts v2 beside v1 and holds it at 30% while it judges.
        expect(page.get_by_test_id("rollout-step")).to_have_text("judging", timeout=60_000)
        expect(page.get_by_test_id("traffic-split")).to_contain_text("v1 70%")
        expect(page.get_by_test_id("traffic-split")).to_contain_text("v2 30%")
        gates = page.get_by_test_id("gates")
        expect(gates.locator("tbody tr")).to_have_count(2)  # min_requests and max_error_rate
        expect(gates).to_contain_text("max_error_rate")
        # Readings arrive as the requests do: the error-rate gate passes on v2's answers.
        expect(gates.locator("tr", has_text="max_error_rate")).to_contain_text(
            "pass", timeout=30_000
        )
        shot(page, "11-rollout-canary-judging")

        rollout.get_by_role("link", name=ENDPOINT).click()
        endpoint = page.get_by_test_id("endpoint-page")
        serving(endpoint, 1)
        expect(page.get_by_test_id("rollout-in-progress")).to_contain_text("judging")
        expect(page.get_by_test_id("traffic-split")).to_contain_text("v2 30%")
        replicas = page.get_by_test_id("replicas")
        expect(replicas.locator("tbody tr")).to_have_count(2)
        expect(replicas.locator("tbody tr", has_text="v2")).to_contain_text("ready")
        # Both versions are charted with the requests each answered in the last complete
        # window, and drawn as lines once two windows are in.
        chart = page.get_by_test_id("chart-rps")
        expect(chart.locator(".legend li")).to_have_text(
            [re.compile(r"^v1: (?!0\.00)\d"), re.compile(r"^v2: (?!0\.00)\d")], timeout=30_000
        )
        expect(chart.locator("polyline")).to_have_count(2, timeout=30_000)
        shot(page, "12-endpoint-during-canary")

        page.get_by_test_id("rollout-in-progress").get_by_role("link").click()
        page.get_by_test_id("pause").click()
        expect(page.get_by_test_id("rollout-step")).to_have_text("paused")
        expect(page.get_by_test_id("resume")).to_be_visible()
        assert page.get_by_test_id("pause").count() == 0
        shot(page, "13-rollout-paused")
        page.get_by_test_id("resume").click()
        expect(page.get_by_test_id("rollout-step")).to_have_text("judging")
        expect(page.get_by_test_id("events")).to_contain_text("resumed")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("promote").click()
        watch_until_done(page, "complete")
        serving(page, 2)
        expect(page.get_by_test_id("steps")).to_contain_text("done")
        expect(page.get_by_test_id("traffic-split")).to_have_count(0)  # the split is over
        shot(page, "14-canary-promoted")
    assert env.answering_version() == "2"
    statuses = {status for status, _ in traffic.answers}
    assert statuses == {200}, statuses  # not one request failed through the canary
    assert {version for _, version in traffic.answers} == {"1", "2"}


@pytest.mark.timeout(600)
def test_a_version_failing_its_golden_prompt_is_rolled_back_by_itself(
    console_env: ConsoleEnv, page: Page, shot: Shot
) -> None:
    env = console_env
    serve_v1(env)
    form, policy = canary_deploy_form(page, env, traffic_percent=10, hold_seconds=60)
    # The tiny random model never answers this: v2 is a bad version by its golden prompt.
    policy.get_by_label("golden prompt").fill("What is 2+2?")
    policy.get_by_label("expect regex").fill(r"^four$")
    form.get_by_test_id("deploy-submit").click()
    expect(page.get_by_test_id("rollout-page")).to_contain_text("Rollout of v2")
    watch_until_done(page, "failed")
    expect(page.get_by_test_id("rollout-error")).to_contain_text("golden prompt 1")
    serving(page, 1)
    expect(page.get_by_test_id("events")).to_contain_text("golden prompt")
    shot(page, "15-canary-rolled-back-by-golden-prompt")
    assert env.answering_version() == "1"
    page.get_by_role("link", name=ENDPOINT).first.click()
    history = page.get_by_test_id("history").locator("tbody tr").first
    expect(history).to_contain_text("failed")
