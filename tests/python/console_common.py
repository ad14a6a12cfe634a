"""What the console's browser checks share (console_check.py, console_recover.py): Chromium
launched as this machine needs it, a page that fails the run on any dialog (alert, confirm,
prompt), page error or console error, each step's screenshot and width check, the step
protocol with the Rust test (a line when a step is done, then wait for its "go" on stdin), and
axe-core's accessibility check."""
import sys

from axe_playwright_python.sync_playwright import Axe

errors = []


def launch(p):
    return p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )


def open_console(p, login_url):
    """Chromium at 1366x768, watched, logged in by `login_url`, the gateway shown."""
    from playwright.sync_api import expect
    browser = launch(p)
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    watch(page)
    page.goto(login_url)
    expect(page.locator("#gw")).to_contain_text("gw-test", timeout=20000)
    return browser, page


def stepper(shots):
    """`step(name, page)` for a run whose screenshots go to `shots`."""
    return lambda name, page: step(shots, name, page)


def step(shots, name, page):
    """Step `name` is done: its screenshot, no sideways scrolling, then wait for the test."""
    page.screenshot(path=f"{shots}/{name}.png", full_page=True)
    fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    if not fits:
        errors.append(f"{name}: the page is wider than the window (sideways scrolling)")
    if errors:
        sys.exit("; ".join(errors))
    print(name, flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("the test stopped")


def accessible(name, page):
    """axe-core's check of the page as it is now: no serious or critical violation."""
    found = Axe().run(page).response["violations"]
    bad = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
           for v in found if v["impact"] in ("serious", "critical")]
    if bad:
        errors.append(f"{name}: accessibility: " + "; ".join(bad))


def watch(page):
    page.on("dialog", lambda d: (errors.append(f"a dialog: {d.type} {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(f"console error: {m.text}") if m.type == "error" else None)
