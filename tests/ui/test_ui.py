"""The web UI in a real browser: sign in, the overview's charts drawn from recorded traffic,
filtering inferences and opening one, feedback stored from its page, the playground
streaming two models side by side, creating and revoking a key, signing out; and what a
virtual key may not do: open another tenant's inference or an admin page, or change
anything without its page's CSRF token."""

import re

from conftest import ADMIN_KEY, screenshot

TIMEOUT = 30_000  # ms: generous; a debug build on a loaded machine


def sign_in(page, url: str, key: str, path: str = "/ui") -> None:
    page.goto(url + path)
    page.wait_for_url(re.compile(r".*/ui/login\?next=.*"))
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url + path, timeout=TIMEOUT)


def test_the_admin_walks_through_every_page(gateway, page):
    _, app_key = gateway.key("app")
    first = gateway.chat(app_key, "openai/plain", "What is the capital of France?")
    second = gateway.chat(app_key, "anthropic/plain", "Name a prime number.")
    streamed = gateway.chat_stream(app_key, "openai/stream", "Say hello.")
    # Reading an inference back waits for the recorder to write it.
    for inference in (first, second, streamed):
        assert gateway.call("GET", f"/v1/inferences/{inference}")[0] == 200
    url = gateway.url

    sign_in(page, url, ADMIN_KEY)
    # The overview: totals and the charts, drawn from /v1/stats.
    page.wait_for_selector("#charts[data-drawn]", timeout=TIMEOUT)
    assert int(page.get_attribute("#charts", "data-drawn")) >= 1
    # Requests, latency, cost, tokens, time to first token (the streamed request), cache.
    assert page.locator("#charts .uplot canvas").count() == 6
    assert page.inner_text("#total-requests").strip() not in ("", "0")
    screenshot(page, "overview")
    # Split by model: a series per model in every chart.
    page.select_option("#split", "model")
    page.wait_for_url(re.compile(r".*split=model.*"), timeout=TIMEOUT)
    page.wait_for_selector("#charts[data-drawn]", timeout=TIMEOUT)
    legend = page.inner_text("#charts [data-chart=requests]")
    assert "openai/plain" in legend and "anthropic/plain" in legend, legend
    assert page.locator("#charts .uplot canvas").count() == 6
    screenshot(page, "overview-split")

    # Inferences: filter, then open one.
    page.click("nav.main-nav >> text=Inferences")
    page.select_option("select[name=status]", "ok")
    page.fill("input[name=model]", "openai/plain")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*status=ok.*"))
    rows = page.locator("table.inferences tbody tr")
    assert rows.count() == 1, page.content()
    screenshot(page, "inferences")
    rows.first.locator("a").click()
    page.wait_for_url(f"{url}/ui/inferences/{first}")
    assert "What is the capital of France?" in page.inner_text(".conversation")
    assert page.locator(".timeline .bar.ok").count() == 1

    # Feedback from the page, stored.
    page.check("input[name=boolean][value=true]")
    page.fill("textarea[name=comment]", "Right answer, well put.")
    with page.expect_navigation():
        page.click("#feedback-form button[type=submit]")
    assert "Right answer, well put." in page.inner_text("ul.feedback")
    screenshot(page, "inference")
    status, _, record = gateway.call("GET", f"/v1/inferences/{first}")
    assert status == 200 and record["feedback"][0]["boolean"] is True
    assert record["feedback"][0]["comment"] == "Right answer, well put."

    # Add it to a dataset from its page.
    page.fill("#dataset-form input[name=dataset_name]", "picked")
    page.click("#dataset-form button[type=submit]")
    page.wait_for_selector("#toast:not([hidden])", timeout=TIMEOUT)
    assert "Added to picked" in page.inner_text("#toast"), page.inner_text("#toast")

    # The playground: two models, both columns stream.
    page.click("nav.main-nav >> text=Playground")
    page.wait_for_selector("#pg-columns .column >> nth=1", timeout=TIMEOUT)
    columns = page.locator("#pg-columns .column")
    assert columns.count() == 2
    columns.nth(0).locator(".pg-model").fill("openai/stream")
    columns.nth(1).locator(".pg-model").fill("anthropic/stream")
    page.fill("#pg-user", "Say hello.")
    page.click("#pg-run")
    page.wait_for_selector('#pg-columns .column:nth-child(1)[data-state="done"]', timeout=TIMEOUT)
    page.wait_for_selector('#pg-columns .column:nth-child(2)[data-state="done"]', timeout=TIMEOUT)
    for i in range(2):
        assert columns.nth(i).locator(".pg-output").inner_text().strip(), f"column {i} streamed nothing"
        assert "first token" in columns.nth(i).locator(".pg-stats").inner_text()
    page.wait_for_selector("#pg-columns .column .pg-stats a", timeout=TIMEOUT)
    screenshot(page, "playground")
    # Keep the second column's answer in the dataset.
    page.fill("#pg-dataset-name", "picked")
    columns.nth(1).locator(".pg-choose").click()
    page.wait_for_selector("#toast:has-text('Saved to picked')", timeout=TIMEOUT)

    # Routes, datasets and tuning render.
    page.click("nav.main-nav >> text=Routes")
    assert "assistant" in page.inner_text("main")
    screenshot(page, "routes")
    page.click("nav.main-nav >> text=Datasets")
    page.click("#datasets-table tbody button:has-text('picked')", timeout=TIMEOUT)
    page.wait_for_selector("#dataset-rows ol.rows li >> nth=1", timeout=TIMEOUT)
    rows_text = page.inner_text("#dataset-rows ol.rows")
    assert "What is the capital of France?" in rows_text and "Say hello." in rows_text
    screenshot(page, "datasets")
    page.click("nav.main-nav >> text=Evals")
    page.wait_for_selector("main p.empty", timeout=TIMEOUT)
    page.click("nav.main-nav >> text=Tuning")
    page.wait_for_selector("#jobs-empty:not([hidden]), #jobs-table tbody tr", timeout=TIMEOUT)

    # Keys: create one (shown once), then revoke it.
    page.click("nav.main-nav >> text=Keys")
    page.fill("#key-form input[name=name]", "made-in-the-ui")
    page.fill("#key-form input[name=rpm]", "60")
    page.click("#key-submit")
    page.wait_for_selector("#new-key:not([hidden])", timeout=TIMEOUT)
    new_key = page.inner_text("#new-key-text").strip()
    assert new_key.startswith("fk-")
    assert gateway.call("GET", "/v1/models", key=new_key)[0] == 200
    row = page.locator("#keys-table tbody tr", has_text="made-in-the-ui")
    screenshot(page, "keys")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.revoke").click()
    page.wait_for_selector("#keys-table tbody tr:has-text('made-in-the-ui') .badge.err", timeout=TIMEOUT)
    assert gateway.call("GET", "/v1/models", key=new_key)[0] == 401

    # Sign out: back to the sign-in page, and the pages are closed again.
    page.click("#logout")
    page.wait_for_url(f"{url}/ui/login", timeout=TIMEOUT)
    page.goto(url + "/ui/keys")
    page.wait_for_url(re.compile(r".*/ui/login\?next=%2Fui%2Fkeys"))


def test_a_tenant_sees_its_own_and_cannot_change_anything_without_the_token(gateway, page):
    _, mine = gateway.key("tenant-mine")
    _, theirs = gateway.key("tenant-theirs")
    own_id = gateway.chat(mine, "openai/plain", "My question")
    other_id = gateway.chat(theirs, "openai/plain", "Their secret question")
    for inference in (own_id, other_id):
        assert gateway.call("GET", f"/v1/inferences/{inference}")[0] == 200
    url = gateway.url

    sign_in(page, url, mine, "/ui/inferences")
    listed = page.inner_text("table.inferences")
    assert "My question" in listed and "Their secret question" not in listed
    assert page.goto(f"{url}/ui/inferences/{own_id}").status == 200
    response = page.goto(f"{url}/ui/inferences/{other_id}")
    assert response.status == 404
    assert "Their secret question" not in page.content()
    for admin_page in ["/ui/keys", "/ui/tuning"]:
        assert page.goto(url + admin_page).status == 403, admin_page
    assert page.locator("nav.main-nav a[href='/ui/keys']").count() == 0

    # A state change the page did not sign with its CSRF token is refused; with it, it is not.
    page.goto(f"{url}/ui/inferences/{own_id}")
    body = {"inference_id": own_id, "boolean": True}
    forged = page.evaluate(
        """async (body) => (await fetch('/v1/feedback', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)})).status""",
        body,
    )
    assert forged == 403
    signed = page.evaluate(
        """async (body) => (await fetch('/v1/feedback', {method: 'POST', headers: {'content-type': 'application/json', 'x-fungible-csrf': document.querySelector('meta[name=csrf-token]').content}, body: JSON.stringify(body)})).status""",
        body,
    )
    assert signed == 200
