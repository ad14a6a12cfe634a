#!/usr/bin/env python3
"""Drives the console in headless Chromium (Debian's /usr/bin/chromium) with Playwright, step
by step with the Rust test (tests/console.rs) that runs the daemon: it prints a line when each
step is done and waits for the test's "go" on stdin before the next; the test checks the API
and the receivers after each. A screenshot of each step goes to SCREENSHOTS. Any dialog
(alert, confirm, prompt), page error or console error fails the run, and so does a page wider
than its window (sideways scrolling) at 1366x768 or at phone width (390x844), or a serious or
critical accessibility violation axe-core finds (loaded, a device open, at phone width).

Usage: console_check.py LOGIN_URL SCREENSHOTS RECEIVER_URL SECRET
(LOGIN_URL: the console's URL with #token=..., as `edgehook console` prints it)
"""
import sys

from playwright.sync_api import sync_playwright, expect

from console_common import accessible, errors, open_console, stepper, watch

login_url, shots, receiver, secret = sys.argv[1:5]
step = stepper(shots)


with sync_playwright() as p:
    # Logging in: the URL's fragment carries the token, and leaves the address bar at once.
    browser, page = open_console(p, login_url)
    expect(page.locator("#live")).to_contain_text("live", timeout=20000)
    if "#token" in page.url:
        errors.append("the token stayed in the address bar")
    expect(page.locator("#logout")).to_be_visible()
    expect(page.locator("#login")).to_be_hidden()
    accessible("loaded", page)
    step("loaded", page)

    # The test publishes a reading and brings a display online: both appear; the detail of a
    # device shows its values in full (as text: a value with markup is shown, not run).
    row = page.locator('#devices tr[data-device="console-occ-1"]')
    expect(row).to_be_visible(timeout=30000)
    expect(row).to_contain_text("online")
    expect(page.locator('#devices tr[data-device="disp-1"]')).to_be_visible(timeout=30000)
    expect(page.locator("#workspaces .ws")).to_contain_text("room-1", timeout=30000)
    page.locator("#device-filter").fill("disp")
    expect(row).to_have_count(0)
    page.locator("#device-filter").fill("")
    row.click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-id")).to_have_text("console-occ-1")
    expect(page.locator("#detail-values")).to_contain_text('"presence"', timeout=20000)
    # Its health history: online since it was first heard.
    expect(page.locator("#detail-history li").first).to_contain_text("online")
    accessible("device", page)
    step("device", page)
    page.locator("#detail-close").click()
    expect(page.locator("#detail")).to_be_hidden()

    # An action to the display, watched to its end.
    page.locator('#devices tr[data-device="disp-1"]').click()
    expect(page.locator("#detail-id")).to_have_text("disp-1")
    form = page.locator("#act")
    # The form offers the actions its class takes.
    expect(form.locator('select[name="name"] option')).to_have_text(["show_message"])
    form.locator('select[name="name"]').select_option("show_message")
    form.locator('textarea[name="params"]').fill('{"text": "<b>Welcome</b>"}')
    form.locator('button[type="submit"]').click()
    expect(page.locator("#act-msg")).to_have_attribute("data-status", "succeeded", timeout=30000)
    # Its own desired value (a plain word is a string).
    page.locator("#desire").locator('input[name="value"]').fill("v2.1")
    page.locator("#desire").locator('button[type="submit"]').click()
    expect(page.locator("#desire-msg")).to_contain_text('desired "v2.1"', timeout=20000)
    expect(page.locator("#detail-facts")).to_contain_text('"v2.1"', timeout=20000)
    step("action", page)
    # Back to the class's value.
    page.locator("#desire-clear").click()
    expect(page.locator("#desire-msg")).to_contain_text("back to the class's value", timeout=20000)
    step("desire-cleared", page)
    # Forgotten: the first click asks, the second forgets.
    page.locator("#forget").click()
    expect(page.locator("#forget")).to_contain_text("Click again to forget disp-1")
    page.locator("#forget").click()
    expect(page.locator("#notice")).to_contain_text("forgot disp-1", timeout=20000)
    expect(page.locator('#devices tr[data-device="disp-1"]')).to_have_count(0, timeout=20000)
    expect(page.locator("#detail")).to_be_hidden()
    step("forgotten", page)

    # A webhook made with the form.
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

    # The test publishes again: the new endpoint's delivery shows in the live log, and the
    # log's filter keeps only it.
    expect(page.locator("#deliveries")).to_contain_text("console-crm", timeout=30000)
    expect(page.locator("#deliveries tr", has_text="console-crm").first).to_contain_text("delivered 200")
    page.locator("#delivery-filter").fill("console-crm")
    expect(page.locator("#deliveries tr").first).to_contain_text("console-crm")
    page.locator("#delivery-filter").fill("")
    step("delivered", page)

    # Each row button does what it says; the answer is shown in the row, never in a dialog.
    row = page.locator('#endpoints tr[data-endpoint="console-crm"]')
    row.locator('button[data-act="pause"]').click()
    expect(row).to_contain_text("paused", timeout=20000)
    step("paused", page)
    # Paused, a reading waits in its queue: the pending list shows it; purged, it is gone.
    queue = page.locator('#queues tr[data-queue="console-crm"]')
    queue.locator('button[data-qact="list"]').click()
    expect(page.locator("#pending")).to_contain_text("sensor.reading.updated", timeout=20000)
    queue.locator('button[data-qact="purge"]').click()
    queue.locator('button[data-qact="purge-yes"]').click()
    expect(page.locator("#notice")).to_contain_text("pending event(s) of console-crm for good", timeout=20000)
    expect(page.locator("#pending")).to_contain_text("nothing pending", timeout=20000)
    step("purged", page)
    # Edited: the form takes its settings; saved as a merge patch (the secret unchanged).
    row.locator('button[data-act="edit"]').click()
    form = page.locator("#create")
    expect(form.locator('input[name="url"]')).to_have_value(receiver)
    form.locator('input[name="description"]').fill("edited in the console")
    form.locator('button[type="submit"]').click()
    expect(page.locator("#msg")).to_contain_text("saved console-crm", timeout=20000)
    step("edited", page)
    row.locator('button[data-act="resume"]').click()
    expect(row.locator("td").nth(1)).to_have_text("active", timeout=20000)
    step("resumed", page)
    row.locator('button[data-act="test"]').click()
    expect(row.locator("[data-msg]")).to_contain_text("test delivered: HTTP 200", timeout=20000)
    step("tested", page)
    row.locator('button[data-act="delete"]').click()
    row.locator('button[data-act="delete-drain"]').click()
    expect(page.locator('#endpoints tr[data-endpoint="console-crm"]')).to_have_count(0, timeout=20000)
    expect(page.locator("#notice")).to_contain_text("console-crm deleted")
    step("deleted", page)

    # Logging out: the token is forgotten; a change asks for it inline.
    page.locator("#logout").click()
    expect(page.locator("#login")).to_be_visible()
    page.locator('#devices tr[data-device="console-occ-1"]').click()
    # (console-occ-1's class takes no actions: its form says so and sends nothing.)
    expect(page.locator("#act-none")).to_contain_text("takes no actions")
    expect(page.locator("#act")).to_be_hidden()
    page.locator("#desire").locator('input[name="value"]').fill("v3")
    page.locator("#desire").locator('button[type="submit"]').click()
    expect(page.locator("#desire-msg")).to_contain_text("log in", timeout=20000)
    step("logged-out", page)

    # Logging in by pasting the token: changes work again.
    page.locator("#token-input").fill(login_url.split("#token=", 1)[1])
    page.locator("#login").locator('button[type="submit"]').click()
    expect(page.locator("#logout")).to_be_visible()
    default = page.locator('#endpoints tr[data-endpoint="default"]')
    default.locator('button[data-act="pause"]').click()
    expect(default.locator("td").nth(1)).to_have_text("paused", timeout=20000)
    step("logged-in", page)
    default.locator('button[data-act="resume"]').click()
    expect(default.locator("td").nth(1)).to_have_text("active", timeout=20000)

    # At phone width: everything fits and works: a device opened, a delivery opened, an
    # endpoint paused (the test checks the API) and resumed.
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    watch(phone)
    phone.goto(login_url)
    occ = phone.locator('#devices tr[data-device="console-occ-1"]')
    expect(occ).to_be_visible(timeout=30000)
    occ.click()
    expect(phone.locator("#detail-history li").first).to_contain_text("online", timeout=20000)
    phone.locator("#deliveries tr").first.click()
    expect(phone.locator("#delivery-request")).to_contain_text('"id"', timeout=20000)
    accessible("phone", phone)
    default = phone.locator('#endpoints tr[data-endpoint="default"]')
    default.locator('button[data-act="pause"]').click()
    expect(default.locator("td").nth(1)).to_have_text("paused", timeout=20000)
    step("phone", phone)
    default.locator('button[data-act="resume"]').click()
    expect(default.locator("td").nth(1)).to_have_text("active", timeout=20000)
    step("phone-resumed", phone)
    browser.close()
