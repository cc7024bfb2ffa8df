#!/usr/bin/env python3
"""Drives a node's web console in headless Chromium (selenium + chromedriver), as
tests/console.rs asks:

  console_browser.py --url http://127.0.0.1:PORT --token-file FILE --node NAME \
      --service echo --chatty chatty --peer NAME2 --peer-url http://127.0.0.1:PORT2 \
      --requires broker --out target/console-test

- loads the page, is refused a wrong token (the page asks again), then signs in;
- waits for the services table to show SERVICE running (or ready), clicks its restart
  button and waits for its process id to change;
- follows the output of the CHATTY service and waits for new lines to arrive;
- waits for the cluster map to draw NODE online, and PEER online with a link to its console
  and an arrow from its requirement to NODE; and for the broker and ipc panels to be filled;
- saves full-page screenshots at a laptop width and a phone width under OUT;
- follows the link to PEER's console, signs in there and sees the roles PEER does not run
  said so;
- fails if the browser logged any error other than the refused token's 401.

Every wait has a deadline; nothing sleeps a fixed time. Exit status 0 when all is well, 1 with
the reason (and the browser's log) otherwise.
"""

import argparse
import base64
import json
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 30
LAPTOP = 1366
PHONE = 390


def fail(driver, why):
    print(f"console test failed: {why}", file=sys.stderr)
    for entry in logs(driver):
        print(f"  browser log: {entry}", file=sys.stderr)
    try:
        driver.save_screenshot(os.path.join(ARGS.out, "console-failure.png"))
        print(f"  screenshot: {os.path.join(ARGS.out, 'console-failure.png')}", file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - best effort while failing
        print(f"  (no screenshot: {err})", file=sys.stderr)
    driver.quit()
    sys.exit(1)


SEEN_LOGS = []


def logs(driver):
    """Every browser log entry so far (chromedriver hands each one out once)."""
    try:
        SEEN_LOGS.extend(driver.get_log("browser"))
    except Exception:  # noqa: BLE001 - the session may be gone
        pass
    return SEEN_LOGS


def until(driver, what, check, timeout=WAIT):
    """Waits until check() returns something truthy; fails naming `what` after `timeout`."""

    def probe(_):
        try:
            return check()
        except StaleElementReferenceException:
            return False

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(probe)
    except TimeoutException:
        fail(driver, f"{what}: not seen within {timeout} s")


def css(driver, selector):
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0] if found else None


def frames(driver, n=2):
    """Lets the page lay out and paint (n animation frames)."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"let n = {n}; const step = () => (--n > 0 ? requestAnimationFrame(step) : done());"
        "requestAnimationFrame(step);"
    )


def screenshot(driver, path, width, mobile):
    """A screenshot of the whole page at `width` CSS pixels."""
    scale = 2 if mobile else 1
    metrics = {"width": width, "height": 900, "deviceScaleFactor": scale, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    frames(driver, 3)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics["height"] = max(int(height), 600)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    frames(driver, 3)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    with open(path, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    if overflow > 1:
        fail(driver, f"at {width} px the page is {overflow} px wider than the screen")
    return path


def sign_in(driver, token):
    field = until(driver, "the token form", lambda: css(driver, "#login:not([hidden]) #token"))
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()


def main():
    token = open(ARGS.token_file, encoding="utf-8").read().strip()
    os.makedirs(ARGS.out, exist_ok=True)

    options = webdriver.ChromeOptions()
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={LAPTOP},900",
    ]:
        options.add_argument(arg)
    if ARGS.chromium:
        options.binary_location = ARGS.chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(ARGS.chromedriver), options=options)
    driver.set_script_timeout(WAIT)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": LAPTOP, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )

    driver.get(ARGS.url)
    # The page asks for the token; a wrong one is refused and asked for again.
    sign_in(driver, "not-the-token")
    until(
        driver,
        "the refusal of a wrong token",
        lambda: (e := css(driver, "#login-error")) and e.is_displayed() and "token" in e.text,
    )
    sign_in(driver, token)
    until(driver, "the dashboard", lambda: css(driver, "#dashboard:not([hidden])"))
    stored = driver.execute_script("return sessionStorage.getItem('troupe-console-token')")
    if stored != token:
        fail(driver, "the token is not kept in sessionStorage")

    # The node panel.
    until(driver, "the node's name", lambda: (e := css(driver, "#node-name")) and e.text == ARGS.node)

    # The service runs; a restart gives it another process.
    row = f'tr[data-service="{ARGS.service}"]'

    def running_pid():
        badge = css(driver, f"{row} .badge")
        pid = css(driver, f"{row} .pid")
        if badge and pid and badge.get_attribute("data-state") in ("running", "ready") and pid.text.isdigit():
            return pid.text
        return None

    pid = until(driver, f"{ARGS.service} running", running_pid)
    restart = driver.find_element(By.CSS_SELECTOR, f'{row} button[data-action="restart"]')
    if not restart.is_enabled():
        fail(driver, "the restart button is disabled on a running service")
    restart.click()
    until(
        driver,
        f"{ARGS.service} restarted with a new pid (was {pid})",
        lambda: (new := running_pid()) and new != pid and new,
    )
    until(
        driver,
        "the restart's result",
        lambda: "Restarted" in driver.find_element(By.CSS_SELECTOR, f"{row} .result").text,
    )
    until(driver, "the buttons enabled again", lambda: restart.is_enabled())

    # A service's output, following: lines keep coming.
    Select(driver.find_element(By.ID, "log-service")).select_by_value(ARGS.chatty)

    def chatty_lines():
        return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#log .line .line-text")]

    first = until(driver, f"the output of {ARGS.chatty}", lambda: chatty_lines() or None)
    until(
        driver,
        f"new output lines of {ARGS.chatty}",
        lambda: (lines := chatty_lines()) and lines[-1] != first[-1],
    )

    # The cluster map draws this node, online, with an arrow for its requirement.
    card = f'#cluster-map .map-node[data-node="{ARGS.node}"]'
    until(
        driver,
        "the cluster map with this node online",
        lambda: (e := css(driver, card)) and e.get_attribute("data-status") == "online",
    )
    if ARGS.peer:
        # The peer node: online, a link to its own console, and an arrow from its requirement
        # to this node, which offers it.
        peer = f'#cluster-map .map-node[data-node="{ARGS.peer}"]'
        until(
            driver,
            f"the peer node {ARGS.peer} online",
            lambda: (e := css(driver, peer)) and e.get_attribute("data-status") == "online",
        )
        until(
            driver,
            f"the link to {ARGS.peer}'s console",
            lambda: (a := css(driver, f"{peer} a.map-name"))
            and (a.get_attribute("href") or "").startswith(ARGS.peer_url),
        )
        arrow = f'#cluster-map path.arrow[data-from="{ARGS.peer}"][data-to="{ARGS.node}"][data-resource="{ARGS.requires}"]'
        until(driver, f"an arrow from {ARGS.peer}'s need of {ARGS.requires} to {ARGS.node}", lambda: css(driver, arrow))

    # The broker: its service with a worker; the ipc hub: its counters.
    until(driver, "the broker panel", lambda: css(driver, '#broker-body[data-filled="true"] tr[data-broker-service]'))
    until(driver, "a broker worker", lambda: css(driver, "#broker-body tr[data-worker]"))
    until(driver, "the request rate", lambda: css(driver, "#broker-body svg.chart"))
    until(driver, "the ipc panel", lambda: css(driver, '#ipc-body[data-filled="true"] [data-counter="connections"]'))

    laptop = screenshot(driver, os.path.join(ARGS.out, "console-laptop.png"), LAPTOP, False)
    phone = screenshot(driver, os.path.join(ARGS.out, "console-phone.png"), PHONE, True)

    if ARGS.peer:
        # The peer's link opens its own console, which asks for its token (another origin,
        # another tab storage) and says which roles it does not run.
        css(driver, f'#cluster-map .map-node[data-node="{ARGS.peer}"] a.map-name').click()
        sign_in(driver, token)
        until(driver, "the peer's console", lambda: (e := css(driver, "#node-name")) and e.text == ARGS.peer)
        for panel in ("services", "broker"):
            until(
                driver,
                f"the peer's {panel} panel saying it is not running",
                lambda: "not running on this node" in driver.find_element(By.ID, f"{panel}-body").text,
            )

    # No JavaScript error, no failed request but the wrong token's 401.
    errors = [
        e
        for e in logs(driver)
        if e.get("level") == "SEVERE"
        and not (e.get("source") == "network" and "401" in e.get("message", ""))
    ]
    if errors:
        fail(driver, f"the browser logged errors: {json.dumps(errors, indent=2)}")
    driver.quit()
    print(json.dumps({"screenshots": [laptop, phone], "restarted": {"from": pid}}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--node", required=True, help="the node's name")
    parser.add_argument("--service", default="echo", help="a service to see running and restart")
    parser.add_argument("--chatty", required=True, help="a service that prints lines all the time")
    parser.add_argument("--peer", default="", help="another node of the cluster, which requires REQUIRES")
    parser.add_argument("--peer-url", default="", help="the peer's console address")
    parser.add_argument("--requires", default="broker", help="a resource the peer requires and this node offers")
    parser.add_argument("--out", required=True, help="where screenshots go")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--chromium", default="", help="the browser binary (default: chromedriver's choice)")
    ARGS = parser.parse_args()
    started = time.monotonic()
    main()
    print(f"console test passed in {time.monotonic() - started:.1f} s", file=sys.stderr)
