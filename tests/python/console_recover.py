#!/usr/bin/env python3
"""The console's recovery work in headless Chromium, step by step with the Rust test
(tests/console.rs) as console_check.py is: a booking shown on its workspace, a dead letter
replayed, a delivery opened (the body sent and the receiver's answer, shown as text), every
dead letter replayed at once, an endpoint a 410 disabled enabled again, and deleted with
the reading it holds purged. The test makes
the receiver refuse before each step and accept before each click, and checks the API and the
receiver after it. It writes the opened delivery's event id and request body to SCREENSHOTS
(delivery-event.txt, delivery-request.txt) for the test to compare with what the receiver got.

Usage: console_recover.py LOGIN_URL SCREENSHOTS
"""
import sys

from playwright.sync_api import sync_playwright, expect

from console_common import accessible, open_console, stepper

login_url, shots = sys.argv[1:3]
LONG = 30000
step = stepper(shots)


with sync_playwright() as p:
    browser, page = open_console(p, login_url)
    step("loaded", page)

    # Upstream booked the room: the booking shows on its workspace.
    booking = page.locator('#workspaces [data-workspace="room-1"] [data-booking="bk-console"]')
    expect(booking).to_contain_text("Review", timeout=LONG)
    step("booked", page)

    # The receiver refused the reading (422) and flaky gives up after one attempt: a dead
    # letter, with the receiver's answer. The test makes the receiver accept; Replay sends it.
    dead = page.locator("#dead tr", has_text="flaky")
    expect(dead).to_have_count(1, timeout=LONG)
    expect(dead).to_contain_text("HTTP 422")
    step("dead", page)
    dead.locator("button[data-replay]").click()
    expect(page.locator("#notice")).to_contain_text("queued again", timeout=LONG)
    expect(page.locator("#dead tr", has_text="flaky")).to_have_count(0, timeout=LONG)
    step("replayed", page)

    # Opened, its delivery shows both attempts, the body sent and the answer, as text.
    row = page.locator('#deliveries tr[data-endpoint="flaky"]', has_text="failed").first
    expect(row).to_be_visible(timeout=LONG)
    event = row.get_attribute("data-attempt")
    row.click()
    box = page.locator("#delivery")
    expect(box).to_be_visible(timeout=LONG)
    expect(page.locator("#delivery-id")).to_have_text(event)
    expect(page.locator("#delivery-attempts tr")).to_have_count(2, timeout=LONG)
    expect(page.locator("#delivery-attempts")).to_contain_text("failed: HTTP 422")
    expect(page.locator("#delivery-attempts")).to_contain_text("delivered 200")
    expect(page.locator("#delivery-facts")).to_contain_text("sensor.reading.updated")
    expect(page.locator("#delivery-request")).to_contain_text(event)
    expect(page.locator("#delivery-response")).to_contain_text("<b>room</b> unknown")
    expect(page.locator("#delivery-response-note")).to_contain_text("HTTP 200")
    if page.locator("#delivery-response b").count():
        sys.exit("the receiver's answer was shown as markup")
    with open(f"{shots}/delivery-event.txt", "w") as f:
        f.write(event)
    with open(f"{shots}/delivery-request.txt", "w") as f:
        f.write(page.locator("#delivery-request").text_content())
    accessible("delivery", page)
    step("opened", page)
    page.locator("#delivery-close").click()
    expect(box).to_be_hidden()

    # Two more refused: Replay all sends both.
    expect(page.locator("#dead tr", has_text="flaky")).to_have_count(2, timeout=LONG)
    step("dead-two", page)
    page.locator("#replay-all").click()
    expect(page.locator("#notice")).to_contain_text("queued again: 2 dead letter(s)", timeout=LONG)
    expect(page.locator("#dead tr", has_text="flaky")).to_have_count(0, timeout=LONG)
    step("replayed-all", page)

    # 410 Gone disabled the endpoint: Enable sends again.
    endpoint = page.locator('#endpoints tr[data-endpoint="flaky"]')
    expect(endpoint.locator("td").nth(1)).to_have_text("disabled", timeout=LONG)
    step("disabled", page)
    endpoint.locator('button[data-act="enable"]').click()
    expect(endpoint.locator("td").nth(1)).to_have_text("active", timeout=LONG)
    expect(endpoint.locator("[data-msg]")).to_contain_text("enabled")
    step("enabled", page)

    # Paused by the test with a reading pending: deleted with what is pending (purged).
    expect(endpoint.locator("td").nth(2)).to_have_text("1", timeout=LONG)
    endpoint.locator('button[data-act="delete"]').click()
    expect(endpoint).to_contain_text("1 event(s) pending")
    endpoint.locator('button[data-act="delete-purge"]').click()
    expect(page.locator('#endpoints tr[data-endpoint="flaky"]')).to_have_count(0, timeout=LONG)
    expect(page.locator("#notice")).to_contain_text("flaky deleted")
    step("deleted-purged", page)
    browser.close()
