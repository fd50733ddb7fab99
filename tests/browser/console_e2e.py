#!/usr/bin/env python3
"""The haloflow console in a real Chromium: log in, open a failed run and see the failing
request, replay it from the failed step and watch the new run succeed without a reload, set
up a trigger (recipients, URL, copy, test webhook, its run), find a suppressed request under
its parent. Writes screenshots of the main pages.

Run by tests/it/console.rs against a served haloflow with emulators; by hand:

    python3 tests/browser/console_e2e.py --base http://127.0.0.1:8081 \
        --user ops --password ... --screenshots target/console-screenshots

Exit status 0 when every scenario passed; the first failure is printed with the page's URL.
"""

import argparse
import re
import sys
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect, sync_playwright

# Long enough for a run on a loaded CI machine; the scenarios wait for states, not for time.
TIMEOUT_MS = 30_000


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the listener serving /console/, e.g. http://127.0.0.1:8081")
    parser.add_argument("--user", default="", help="[server.api] Basic user name (empty: the console is open)")
    parser.add_argument("--password", default="", help="[server.api] password")
    parser.add_argument("--screenshots", default="target/console-screenshots", help="directory for the PNG files")
    parser.add_argument("--flow", default="escalate-to-partner", help="the flow with a failed run and suppressed requests")
    parser.add_argument("--recipients", default="epearson, Antares Team", help="recipients to enter in the setup form")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium executable")
    parser.add_argument("--held-replay", action="store_true",
                        help="the server holds the replay's first request until this script prints "
                        "'waiting: release the replay' (tests/it/console.rs does): check the run is shown running first")
    parser.add_argument("--only", help="comma-separated scenarios to run (after logging in): "
                        "flows, failed-run, replay (needs failed-run), paging, setup, requests, sync, bad-route, logout")
    parser.add_argument("--assets", help="serve the console's files from this directory instead of the server's "
                        "(to try front-end edits without rebuilding)")
    return parser.parse_args()


class Console:
    """One browser page on the console, with what the scenarios share."""

    def __init__(self, page, args):
        self.page = page
        self.args = args
        self.base = args.base.rstrip("/")
        self.shots = Path(args.screenshots)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.problems = []
        self.failed_run_url = None
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        page.on("console", self._console)

    def _console(self, message):
        # CSP violations and uncaught errors arrive as console errors; a 401/404 the page
        # handles is logged by Chromium as a failed resource load, which is not a fault.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console error: {message.text}")

    def open(self, route):
        self.page.goto(f"{self.base}/console/#{route}")
        expect(self.page.locator("main h1")).to_be_visible()

    def shot(self, name, full_page=False):
        # Usable on a laptop: nothing wider than the 1366 px window.
        width = self.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the {name} page is {width[0]} px wide in a {width[1]} px window"
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"  screenshot {path}")


def log_in(c):
    page = c.page
    page.goto(f"{c.base}/console/")
    if "/console/login" not in page.url:
        print("  the console is open (no credentials configured)")
        expect(page.locator("main h1")).to_have_text("Flows")
        return
    if c.args.user:
        page.fill("#username", c.args.user)
        page.fill("#password", c.args.password + "-wrong")
        page.click("button[type=submit]")
        expect(page.get_by_text("Wrong user name, password or token.")).to_be_visible()
        c.shot("login")
        page.fill("#username", c.args.user)
        page.fill("#password", c.args.password)
    else:
        page.fill("#token", c.args.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/console/(#.*)?$"))
    expect(page.locator("main h1")).to_have_text("Flows")
    expect(page.locator("#who")).to_contain_text("Signed in")


def flows_page(c):
    c.open("/flows")
    card = c.page.locator(f"article[data-flow='{c.args.flow}']")
    expect(card).to_be_visible()
    expect(card.locator("li.node.trigger")).to_be_visible()
    assert card.locator("li.node[data-step]").count() >= 1, "the flow's steps are drawn"
    expect(card.locator(".counts")).to_contain_text("failed")
    # Keyboard: the skip link shows when focused, the navigation follows it, and Enter on it
    # moves the focus to the content without leaving the page.
    c.page.locator("a.skip").focus()
    expect(c.page.locator("a.skip")).to_be_in_viewport()
    c.page.keyboard.press("Tab")
    expect(c.page.get_by_role("link", name="Flows", exact=True)).to_be_focused()
    c.page.keyboard.press("Shift+Tab")
    c.page.keyboard.press("Enter")
    expect(c.page.locator("#main")).to_be_focused()
    expect(c.page.locator("main h1")).to_have_text("Flows")
    c.page.get_by_role("button", name="Reload flows from disk").click()
    expect(c.page.locator("#reload")).to_contain_text("all flows valid")
    c.shot("flows", full_page=True)


def failed_run(c):
    page = c.page
    c.open(f"/runs?flow={c.args.flow}&status=failed")
    row = page.locator("tr[data-status=failed]").first
    expect(row).to_be_visible()
    c.shot("runs")
    row.locator("a").first.click()
    expect(page.locator("#run-status")).to_have_text("failed")
    failed_step = page.locator("article.step-failed").first
    expect(failed_step).to_be_visible()
    bad = failed_step.locator("table.exchanges tr.bad").first
    expect(bad).to_be_visible()
    cells = bad.locator("td").all_inner_texts()
    method, url, status = cells[1], cells[2], cells[3]
    assert method in ("GET", "POST", "PUT", "PATCH", "DELETE"), f"method shown: {cells}"
    assert url.startswith("http"), f"URL shown: {cells}"
    assert re.fullmatch(r"[45]\d\d|no answer", status), f"status shown: {cells}"
    expect(page.locator("section .message-error").first).to_contain_text("failed")
    print(f"  failing request: {method} {url} -> {status}")
    c.shot("run", full_page=True)
    c.failed_run_url = page.url


def replay(c):
    page = c.page
    run_url = c.failed_run_url
    page.goto(run_url)
    expect(page.locator("#run-status")).to_have_text("failed")
    # A marker on the window: it survives hash navigation and live updates, not a reload.
    page.evaluate("window.__noReload = true")
    page.click("#replay-failed")
    dialog = page.locator("#replay-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("create records again")
    c.shot("replay-dialog")
    page.click("#replay-confirm")
    page.wait_for_url(lambda url: url != run_url)
    if c.args.held_replay:
        # The server holds the new run's request: the page shows it unfinished, then, once
        # released, finished by itself (live update).
        expect(page.locator("#run-status")).to_have_text(re.compile("queued|running"))
        print("  the replay is shown running", flush=True)
        print("  waiting: release the replay", flush=True)
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=TIMEOUT_MS)
    assert page.evaluate("window.__noReload === true"), "the page reloaded"
    if c.args.held_replay:
        expect(page.locator("main p.offscreen[role=status]")).to_have_text("The run is now succeeded.")
    expect(page.locator("dt", has_text="Replay of")).to_be_visible()
    print(f"  replay succeeded: {page.url}")


def paging(c):
    page = c.page
    c.open(f"/runs?flow={c.args.flow}&limit=2")
    rows = page.locator("tr[data-run]")
    expect(rows).to_have_count(2)
    first = rows.evaluate_all("rows => rows.map(r => r.dataset.run)")
    page.click("#older")
    expect(page.get_by_role("link", name="Newest")).to_be_visible()
    expect(rows.first).not_to_have_attribute("data-run", first[0])
    older = rows.evaluate_all("rows => rows.map(r => r.dataset.run)")
    assert older and not set(older) & set(first), f"the older page repeats runs: {first} then {older}"
    print(f"  newest {first}, then older {older}")


def setup(c):
    page = c.page
    c.open("/flows")
    page.locator(f"article[data-flow='{c.args.flow}'] a", has_text="Set up the trigger").click()
    expect(page.locator("main h1")).to_contain_text("Set up the trigger")
    page.fill("#recipients", c.args.recipients)
    page.click("text=Show the URL")
    names = [r.strip() for r in c.args.recipients.split(",") if r.strip()]
    encoded = ",".join(re.sub(r" ", "%20", n) for n in names)
    url_field = page.locator("#trigger-url")
    expect(url_field).to_have_value(re.compile(r"[?&]recipients=" + re.escape(encoded) + "$"))
    url = url_field.input_value()
    page.get_by_role("button", name="Copy the trigger URL").click()
    expect(page.locator(".copy-status").first).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == url, f"the clipboard holds {copied!r}, not {url!r}"
    print(f"  trigger URL: {url}")
    c.shot("setup", full_page=True)
    page.click("#send-test")
    link = page.locator("a.test-run").first
    expect(link).to_be_visible(timeout=TIMEOUT_MS)
    link.click()
    expect(page.locator("#run-status")).to_be_visible()
    expect(page.locator("#run-status")).to_have_text(re.compile("queued|running|succeeded|failed"))
    print(f"  test webhook run: {page.url}")


def suppressed(c):
    page = c.page
    c.open(f"/requests?flow={c.args.flow}")
    child = page.locator("tr[data-verdict=suppressed]").first
    expect(child).to_be_visible()
    parent_id = child.get_attribute("data-parent")
    parent = page.locator(f"tr[data-request='{parent_id}']")
    expect(parent).to_be_visible()
    expect(parent.locator(".suppressed-count")).to_contain_text("suppressed")
    order = page.evaluate(
        """([p, ch]) => {
            const rows = [...document.querySelectorAll('table.requests tbody tr')];
            return [rows.findIndex(r => r.dataset.request === p), rows.indexOf(document.querySelector(`tr[data-request='${ch}']`))];
        }""",
        [parent_id, child.get_attribute("data-request")],
    )
    assert 0 <= order[0] < order[1], f"the suppressed request is listed under its parent: rows {order}"
    print(f"  suppressed under {parent_id}: {parent.locator('.suppressed-count').inner_text()}")
    c.shot("requests", full_page=True)


def sync_page(c):
    c.open("/sync")
    expect(c.page.locator("#sn-scans")).to_be_visible()
    expect(c.page.locator("main .loading")).to_have_count(0)
    c.shot("sync")


def bad_route(c):
    # A route that does not decode is not found (no script error), and the console still
    # navigates after it.
    c.page.goto(f"{c.base}/console/#/runs/%E0")
    expect(c.page.locator("main h1")).to_have_text("Not found")
    c.open("/flows")
    expect(c.page.locator("main h1")).to_have_text("Flows")


def serve_assets(context, args):
    folder = Path(args.assets)
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

    def fulfil(route):
        path = route.request.url.split("?")[0].split("#")[0]
        file = folder / path.rsplit("/", 1)[-1]
        if not file.is_file():
            return route.continue_()
        route.fulfill(status=200, body=file.read_bytes(), content_type=types.get(file.suffix, "application/octet-stream"))

    context.route(re.compile(r".*/console/assets/[^/?#]+([?#].*)?$"), fulfil)


def log_out(c):
    page = c.page
    logout = page.get_by_role("button", name="Log out")
    if not c.args.user and not c.args.password:
        expect(logout).to_be_hidden()
        return
    logout.click()
    page.wait_for_url(re.compile(r"/console/login"))
    page.goto(f"{c.base}/console/#/runs")
    expect(page).to_have_url(re.compile(r"/console/login\?next="))
    expect(page.locator("#password")).to_be_visible()
    if c.args.user:
        # Signing in again lands on the page asked for, route included.
        page.fill("#username", c.args.user)
        page.fill("#password", c.args.password)
        page.click("button[type=submit]")
        expect(page).to_have_url(re.compile(r"/console/#/runs$"))
        expect(page.locator("main h1")).to_have_text("Runs")


SCENARIOS = [
    ("login", "log in", log_in),
    ("flows", "flows and their graphs", flows_page),
    ("failed-run", "a failed run shows its failing request", failed_run),
    ("replay", "replay from the failed step; the new run succeeds", replay),
    ("paging", "runs page by page (Older)", paging),
    ("setup", "trigger setup, copy and test webhook", setup),
    ("requests", "a suppressed request under its parent", suppressed),
    ("sync", "sync back", sync_page),
    ("bad-route", "a route that does not decode", bad_route),
    ("logout", "log out", log_out),
]


def main():
    args = parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # the driver reads progress line by line
    expect.set_options(timeout=TIMEOUT_MS)
    only = set(args.only.split(",")) if args.only else None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=args.base.rstrip("/"))
        context.set_default_timeout(TIMEOUT_MS)
        if args.assets:
            serve_assets(context, args)
        c = Console(context.new_page(), args)
        title = "start"
        try:
            for key, title, scenario in SCENARIOS:
                if only is None or key in only or key == "login":
                    print(f"scenario: {title}")
                    scenario(c)
            if c.problems:
                raise AssertionError("the page logged errors:\n  " + "\n  ".join(c.problems))
        except (AssertionError, PlaywrightError) as error:
            print(f"FAILED: {title}: {error}\n  at {c.page.url}", file=sys.stderr)
            try:
                c.shot("failure", full_page=True)
            except PlaywrightError:
                pass
            return 1
        finally:
            browser.close()
    print("console e2e: all scenarios passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
