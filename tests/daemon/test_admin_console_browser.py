"""The admin console as a person uses it: headless Chromium (Debian's ``chromium``, driven by
Playwright against the system browser; nothing downloaded) on a running daemon and the vendor
fakes. Sign in, pick Jira from the grid, fill the generated form, test (success, then a wrong
token → Jira's error), save, watch the new integration deliver an event and its status change.

``OCTOPUS_SCREENSHOTS=docs/img`` saves the README's screenshots from this run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from octopus_crm_sandbox.jira import JiraFake
from octopus_crm_sandbox.kit import SandboxServer
from octopus_crm_sandbox.webhook import WebhookFake
from tests.events import keyed, make_event, webhook_config
from tests.process import DaemonProcess, wait_until

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extra")
CHROMIUM = os.environ.get("OCTOPUS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run installs it)"),
]

TOKEN = "admin-token-browser-51c0"
MAPPING = {
    "issue": {
        "project": "SUP",
        "issuetype": "Task",
        "summary": "{{category}} - {{messageContent|truncate:80}}",
        "description": "{{messageContent}}",
    }
}


def shots_dir(tmp_path: Path) -> Path:
    wanted = os.environ.get("OCTOPUS_SCREENSHOTS")
    target = Path(wanted) if wanted else tmp_path / "shots"
    target.mkdir(parents=True, exist_ok=True)
    return target


async def test_a_person_configures_jira_in_the_console_and_it_delivers(
    broker: Any, topics: Any, tmp_path: Path
) -> None:
    await broker.create(topics, partitions=1)
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN)
    jira, hook = JiraFake(), WebhookFake()
    shots = shots_dir(tmp_path)
    async with SandboxServer(jira, hook):
        tree = webhook_config({"hook": f"{hook.base_url}/hooks/a"})
        del tree["strategy"]  # every enabled integration gets every event
        daemon = DaemonProcess(broker, topics, tree, tmp_path, "console", admin_token_file=token_file)
        daemon.start()
        try:
            await wait_until(lambda: daemon.get("/readyz")[0] == 200, 60)
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
                try:
                    page = await (
                        await browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 1000})
                    ).new_page()
                    await run_console(page, daemon, jira, broker, topics, shots)
                finally:
                    await browser.close()
            code, _ = daemon.terminate()
        finally:
            daemon.stop()
    assert code == 0
    assert TOKEN not in daemon.log() and jira.accepted["apiToken"] not in daemon.log()


async def run_console(page: Any, daemon: DaemonProcess, jira: JiraFake, broker: Any, topics: Any, shots: Path) -> None:
    expect = playwright_api.expect
    base = f"http://127.0.0.1:{daemon.admin_port}/admin"
    await page.goto(base)
    await expect(page.locator("h1")).to_have_text("CRM 集成管理")  # Chinese first (the browser's locale)
    await page.fill("#token", "wrong-token")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("令牌无效")
    await page.fill("#token", TOKEN)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator(".crm-card[data-type=jira] .zh")).to_have_text("Jira")
    await expect(page.locator(".crm-card[data-type=wecom] .zh")).to_have_text("企业微信")
    await expect(page.locator(".crm-card[data-type=wecom] .en")).to_have_text("WeCom")
    assert await page.evaluate("sessionStorage.getItem('octopus-admin-token')") == TOKEN

    # Jira from the grid; the form is generated from its settings schema
    await page.click(".crm-card[data-type=jira]")
    await page.fill("#f-id", "jira-support")
    await page.fill("#f-name", "技术支持 Jira")
    await page.select_option("select[name=authType]", "basic")
    await page.fill("input[name='credentials.email']", jira.accepted["email"])
    secret = page.locator("input[name='credentials.apiToken']")
    assert await secret.get_attribute("type") == "password"  # write-only input
    await secret.fill(jira.accepted["apiToken"])
    await page.fill("input[name='endpoints.baseUrl']", jira.base_url)
    await page.check("input[name='endpoints.allowPrivateNetwork']")
    await page.fill("textarea[name=mappings]", orjson.dumps(MAPPING).decode())

    await page.click("#test")
    await expect(page.locator("#result")).to_have_class("result ok")
    await expect(page.locator("#result")).to_contain_text("连接成功")
    await page.screenshot(path=str(shots / "admin-console-test-ok.png"), full_page=True)

    await secret.fill("not-the-token")
    await page.click("#test")
    await expect(page.locator("#result")).to_have_class("result bad")
    await expect(page.locator("#result")).to_contain_text("auth/")
    print("wrong token →", await page.locator("#result").inner_text())
    await page.screenshot(path=str(shots / "admin-console-test-wrong-token.png"), full_page=True)
    assert "not-the-token" not in (await page.content()).replace('value="not-the-token"', "")

    await secret.fill(jira.accepted["apiToken"])
    await page.click("#dry")  # routes and rendered bodies of the sample events, nothing sent
    await expect(page.locator("#dry-result")).to_contain_text('"integrationId": "jira-support"')
    await expect(page.locator("#dry-result")).to_contain_text('"project": "SUP"')
    assert not [r for r in jira.requests if r.path == "/rest/api/3/issue"]
    await page.click("#save")
    await expect(page.locator("#result")).to_contain_text("已保存")
    print("saved →", await page.locator("#result").inner_text())
    row = page.locator("#status tr[data-id=jira-support]")
    await expect(row.locator("td[data-col=delivered]")).to_have_text("0")

    # an event: the new integration delivers it and the status (refreshing itself) shows it
    event = make_event(1, category="技术支持", tenant="t-console")
    await broker.produce(topics.input, keyed([event]))
    await expect(row.locator("td[data-col=delivered]")).to_have_text("1", timeout=30_000)
    await expect(row.locator("td[data-col=lastSuccess]")).to_contain_text("SUP-")
    assert len([r for r in jira.requests if r.path == "/rest/api/3/issue"]) == 1
    print("status row →", " | ".join(await row.locator("td").all_inner_texts()))
    await page.screenshot(path=str(shots / "admin-console-status.png"), full_page=True)

    # and in English
    await page.click("#lang")
    await expect(page.locator("h1")).to_have_text("CRM integrations")
    await expect(page.locator("#test")).to_have_text("Test connection")
    await page.screenshot(path=str(shots / "admin-console-en.png"), full_page=True)
