#!/usr/bin/env python3
"""Drives the console in headless Chromium (Debian's /usr/bin/chromium) with Playwright, step
by step with the Rust test (tests/console.rs) that runs the daemon: it prints a line when each
step is done and waits for the test's "go" on stdin before the next. A screenshot of each step
goes to SCREENSHOTS.

Usage: console_check.py URL TOKEN SCREENSHOTS RECEIVER_URL SECRET
"""
import sys

from playwright.sync_api import sync_playwright, expect

url, token, shots, receiver, secret = sys.argv[1:6]


def step(name, page):
    page.screenshot(path=f"{shots}/{name}.png", full_page=True)
    print(name, flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("the test stopped")


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.on("dialog", lambda d: d.accept(token) if d.type == "prompt" else d.accept())
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    expect(page.locator("#gw")).to_contain_text("gw-test", timeout=20000)
    expect(page.locator("#live")).to_contain_text("live", timeout=20000)
    step("loaded", page)
    # The test publishes a reading: the device appears.
    row = page.locator('#devices tr[data-device="console-occ-1"]')
    expect(row).to_be_visible(timeout=30000)
    expect(row).to_contain_text("online")
    expect(page.locator("#workspaces .ws")).to_contain_text("room-1", timeout=30000)
    step("device", page)
    form = page.locator("#create")
    form.locator('input[name="name"]').fill("console-crm")
    form.locator('input[name="description"]').fill("made in the console")
    form.locator('input[name="url"]').fill(receiver)
    form.locator('input[name="events"][value="workspace.status.updated"]').uncheck()
    form.locator('input[name="secret"]').fill(secret)
    form.locator('input[name="key_header"]').fill("X-Api-Key")
    form.locator('input[name="key_value"]').fill("console-key")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#msg")).to_contain_text("created console-crm", timeout=20000)
    expect(page.locator('#endpoints tr[data-endpoint="console-crm"]')).to_contain_text("active", timeout=20000)
    step("created", page)
    # The test publishes again: the new endpoint's delivery shows in the live log.
    expect(page.locator("#deliveries")).to_contain_text("console-crm", timeout=30000)
    expect(page.locator("#deliveries tr", has_text="console-crm").first).to_contain_text("delivered 200")
    step("delivered", page)
    # Each row button does what it says (before, a button without a type was a submit button
    # the click handler passed over: zero requests). The test checks the API after each.
    row = page.locator('#endpoints tr[data-endpoint="console-crm"]')
    row.locator('button[data-act="pause"]').click()
    expect(row).to_contain_text("paused", timeout=20000)
    step("paused", page)
    row.locator('button[data-act="resume"]').click()
    expect(row).to_contain_text("active", timeout=20000)
    step("resumed", page)
    row.locator('button[data-act="test"]').click()
    step("tested", page)
    row.locator('button[data-act="delete"]').click()
    expect(page.locator('#endpoints tr[data-endpoint="console-crm"]')).to_have_count(0, timeout=20000)
    step("deleted", page)
    if errors:
        sys.exit("errors on the page: " + "; ".join(errors))
    browser.close()
