"""The web console in a real headless browser: Debian's chromium driven by selenium
(chromium-driver). It signs in with a token, watches a real upload's progress move, kicks the
session (its client gets 421), lifts a ban (the address logs in again), and a read-only token
can do neither; a page of another site cannot act with the console's token. A failing test
saves a screenshot of the browser (path printed); with COSFTP_CONSOLE_SCREENSHOT=PATH the
upload test also saves the console as the README shows it (scripts/console-screenshot)."""

from __future__ import annotations

import contextlib
import ftplib
import http.server
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Callable, Optional

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from .admin_client import (
    RO_TOKEN,
    RW_TOKEN,
    TENANT_QUOTA,
    AdminClient,
    admin_server,
    admin_url,
    folder_admin_server,
    serving_admin,
)
from .quiet_http import QuietHTTPServer
from .redis6 import Redis6Proxy
from .server_proc import unreachable_receiver, wait_until
from .test_admin_api import HeldUpload, log_in
from .test_clients import require
from .test_cluster import start_redis

MIB = 1024 * 1024
# What works here (machine notes): no sandbox as root, no GPU, nothing fetched in the
# background, a new empty profile per test.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1440,1100")
WAIT = 30.0  # the console polls every second; a loaded machine is slower


@pytest.fixture(scope="module")
def console(emulator, tmp_path_factory):
    yield from serving_admin(emulator, tmp_path_factory, "console", unreachable_receiver())


@pytest.fixture
def browser(tmp_path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = require("chromium")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(require("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def screenshot_on_failure(driver: WebDriver, tmp_path, name: str) -> Iterator[None]:
    """Save what the browser shows if the block fails, and print where."""
    try:
        yield
    except BaseException:
        path = tmp_path / f"{name}-failure.png"
        driver.save_screenshot(str(path))
        print(f"screenshot of the browser at the failure: {path}")
        raise


def wait_for(driver: WebDriver, found: Callable[[], object], what: str) -> object:
    """Poll ``found`` until it is truthy (WAIT seconds at most)."""
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(
        lambda _driver: found(), message=f"waiting for {what}")


def said(driver: WebDriver, text: str) -> None:
    """Wait until the console's message line says ``text``: it does once the API answered
    the click, which may be after a poll already redrew the tables (a lift waits for the
    bans file to be saved; the session or ban may be gone from the next poll before that)."""
    wait_for(driver, lambda: driver.find_element(By.ID, "message").text == text,
             f"the message {text!r}")


def sign_in(driver: WebDriver, proc, token: str) -> None:
    driver.get(f"{admin_url(proc)}/")
    driver.find_element(By.ID, "signin-token").send_keys(token)
    driver.find_element(By.ID, "signin-button").click()
    wait_for(driver, lambda: driver.find_element(By.TAG_NAME, "body")
             .get_attribute("data-polled"), "the first poll")


def session_row(driver: WebDriver, session_id: str) -> Optional[WebElement]:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#sessions tr[data-session="{session_id}"]')
    return rows[0] if rows else None


def ban_row(driver: WebDriver, address: str) -> Optional[WebElement]:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#bans tr[data-address="{address}"]')
    return rows[0] if rows else None


def progress_of(driver: WebDriver, session_id: str) -> Optional[list[float]]:
    """The session's progress bar, ``[value, max]``, read in one go (the console redraws
    it every second)."""
    return driver.execute_script(
        "const bar = document.querySelector(`#sessions tr[data-session='${arguments[0]}'] "
        "progress`); return bar && [bar.value, bar.max];", session_id)


def account_row(driver: WebDriver, user: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'#accounts tr[data-user="{user}"]')


def quota_bars(driver: WebDriver, user: str) -> list[list[float]]:
    """The account's quota bars, ``[value, max]`` each (size, then files)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(`#accounts tr[data-user='${arguments[0]}'] "
        "progress`)].map((bar) => [bar.value, bar.max]);", user)


def logged_in_session(api: AdminClient, user: str = "alice") -> str:
    """The id of ``user``'s session, once its worker described it (within a second)."""
    wait_until(lambda: api.session_of(user), what=f"{user}'s session listed")
    return api.session_of(user)["id"]


def no_alert(driver: WebDriver) -> bool:
    try:
        return driver.switch_to.alert is None
    except NoAlertPresentException:
        return True


def test_upload_progress_moves_and_kick_closes_it_with_421(console, browser, tmp_path, area):
    api = AdminClient(admin_url(console))
    api.call("POST", "/bans", json={"address": "192.0.2.7", "seconds": 3600})
    # A file name that is also HTML: the console must show it as text, never run it.
    name = f"<img src=x onerror=alert(1)>{area[-6:]}.bin"
    ftp = log_in(console)
    reader = log_in(console, "127.0.0.2", "reader", "reader-pw")
    upload = HeldUpload(ftp, name, 8 * MIB)
    with screenshot_on_failure(browser, tmp_path, "upload"):
        sign_in(browser, console, RW_TOKEN)
        # The tenant's quota (8 MiB, 10 files): bars once its home is scanned and counted.
        tenant = log_in(console, "127.0.0.3", "tenant", "tenant-pw")
        tenant.storbinary("STOR photo.jpg", io.BytesIO(b"j" * MIB))
        tenant.quit()
        size, files = TENANT_QUOTA
        wait_for(browser, lambda: quota_bars(browser, "tenant") == [[MIB, size], [1, files]],
                 "the tenant's quota bars")
        assert "1.0 MiB of 8.0 MiB" in account_row(browser, "tenant").text
        # Its upload's event waits in the spool (the receiver is down).
        wait_for(browser, lambda: browser.find_element(By.ID, "events").text.startswith(
            "Queued\n1 event"), "the upload's event queued")
        assert account_row(browser, "alice").find_elements(By.TAG_NAME, "td")[4].text == \
            "unlimited"
        session_id = logged_in_session(api)
        for sent in (MIB, 3 * MIB):
            upload.send(sent - upload.sent)
            wait_for(browser, lambda sent=sent: progress_of(browser, session_id) ==
                     [sent, 8 * MIB], f"the progress bar at {sent} of {8 * MIB} bytes")
        row = session_row(browser, session_id)
        assert f"\u2191 /{name}" in row.text and "/s" in row.text
        assert row.find_elements(By.TAG_NAME, "img") == [] and no_alert(browser)
        wait_for(browser, lambda: ban_row(browser, "192.0.2.7"), "the ban listed")
        # Each worker with its health and memory (its bar against worker_max_rss).
        cells = {tr.get_attribute("data-worker"): [td.text for td in tr.find_elements(
            By.TAG_NAME, "td")] for tr in browser.find_elements(By.CSS_SELECTOR, "#workers tr")
            if tr.get_attribute("data-worker")}
        assert set(cells) == {str(w["pid"]) for w in api.get("/status")["workers"]}
        assert all(row[3] == "ok" and row[6].endswith(" MiB") for row in cells.values()), cells
        if os.environ.get("COSFTP_CONSOLE_SCREENSHOT"):
            browser.save_screenshot(os.environ["COSFTP_CONSOLE_SCREENSHOT"])
        row.find_element(By.CSS_SELECTOR, "button.kick").click()
        said(browser, f"session {session_id} closed")
        wait_for(browser, lambda: session_row(browser, session_id) is None,
                 "the kicked session gone from the table")
    assert upload.reply_after_kick() == "421 Session closed by the server's administrator."
    reader.voidcmd("NOOP")  # the other session goes on
    reader.quit()
    api.call("DELETE", "/bans/192.0.2.7")


def test_what_a_client_sent_is_shown_as_text_its_control_characters_escaped(
        console, browser, tmp_path):
    """A command whose path is HTML, a right-to-left override and a terminal's escape
    sequence: the sessions table shows it as text (no element made, nothing run), the
    override and the escape written as the log writes them (``\\u202e``, ``\\x1b``), so
    that it cannot reorder what the operator reads. Found: the override and the escape were
    put on the page raw (the HTML was already text)."""
    api = AdminClient(admin_url(console))
    hostile = "/<img src=x onerror=alert(1)>\u202egpj\x1b[2J"  # (48 bytes are kept)
    ftp = log_in(console, "127.0.0.25")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd(f"SIZE {hostile}")

    def listed() -> Optional[dict]:
        return next((s for s in api.get("/sessions")["sessions"] if s["client"] ==
                     "127.0.0.25" and (s["command"] or "").startswith("SIZE")), None)
    wait_until(listed, what="the command listed")
    session_id, command = listed()["id"], listed()["command"]
    assert command == f"SIZE {hostile}", command
    shown = command.replace("\u202e", "\\u202e").replace("\x1b", "\\x1b")
    with screenshot_on_failure(browser, tmp_path, "escaped"):
        sign_in(browser, console, RO_TOKEN)
        row = wait_for(browser, lambda: session_row(browser, session_id), "the session listed")
        cell = row.find_elements(By.TAG_NAME, "td")[3]
        assert browser.execute_script("return arguments[0].textContent", cell) == shown
        assert row.find_elements(By.TAG_NAME, "img") == [] and no_alert(browser)
    ftp.quit()


def test_invisible_characters_a_client_sent_are_shown_escaped(console, browser, tmp_path):
    """A command whose path holds a zero width space, a byte order mark, a soft hyphen, a
    left-to-right isolate and a tag character (outside the BMP): the sessions table shows
    each escaped as the log writes it (``\\u200b``, ``\\xad``, ``\\U000e0041``). Found:
    all but the isolate were put on the page raw."""
    api = AdminClient(admin_url(console))
    ftp = log_in(console, "127.0.0.26")
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        ftp.sendcmd("SIZE /in\u200b\ufeff\u00ad\u2066\U000e0041visible")

    def listed() -> Optional[dict]:
        return next((s for s in api.get("/sessions")["sessions"] if s["client"] ==
                     "127.0.0.26" and (s["command"] or "").startswith("SIZE")), None)
    wait_until(listed, what="the command listed")
    with screenshot_on_failure(browser, tmp_path, "invisible"):
        sign_in(browser, console, RO_TOKEN)
        row = wait_for(browser, lambda: session_row(browser, listed()["id"]),
                       "the session listed")
        cell = row.find_elements(By.TAG_NAME, "td")[3]
        assert browser.execute_script("return arguments[0].textContent", cell) == \
            "SIZE /in\\u200b\\ufeff\\xad\\u2066\\U000e0041visible"
    ftp.quit()


def test_a_lifts_problem_from_redis_is_shown_as_text_escaped(emulator, browser, tmp_path):
    """A node of a cluster whose "Redis" (a program answering on redis_url's address) turns
    to say its version is ``5.0`` followed by HTML, a terminal's escapes and a right-to-left
    override: the lift's answer quotes it (``the cluster's ban(s) NOT lifted: ... is version
    ...``) and the console's message line shows it as text, escaped. Found: the override and
    the escapes were put on the page raw (the HTML was already text)."""
    server = start_redis(tmp_path)
    proxy = Redis6Proxy(server.port, "7.0.15")
    proc = admin_server(str(tmp_path / "cluster"), emulator.port, max_login_failures="3")
    proc.sections += f"\n[CLUSTER]\nredis_url = redis://127.0.0.1:{proxy.port}/0\n"
    # (no "=": redis-py reads an INFO value holding one as a dict)
    hostile = "<script>alert(1)</script>\x1b]0;owned\x07\u202e"
    try:
        with proc, screenshot_on_failure(browser, tmp_path, "lift-problem"):
            api = AdminClient(admin_url(proc))
            api.call("POST", "/bans", json={"address": "127.0.0.26"})
            sign_in(browser, proc, RW_TOKEN)
            row = wait_for(browser, lambda: ban_row(browser, "127.0.0.26"), "the ban listed")
            proxy.version = "5.0" + hostile
            row.find_element(By.CSS_SELECTOR, "button.lift").click()
            message = browser.find_element(By.ID, "message")
            wait_for(browser, lambda: "NOT lifted" in message.text, "the lift's problem")
            text = browser.execute_script("return arguments[0].textContent", message)
            assert "is version 5.0<script>alert(1)</script>\\x1b]0;owned\\x07\\u202e;" \
                in text, text
            assert message.find_elements(By.TAG_NAME, "script") == [] and no_alert(browser)
    finally:
        proxy.stop()
        server.stop()


def _fail_logins(proc, source: str, count: int) -> None:
    """``count`` wrong passwords from ``source`` at once (each 530 comes after a delay)."""
    def once() -> None:
        with contextlib.suppress(ftplib.Error, OSError, EOFError):
            log_in(proc, source, "alice", "wrong").close()
    threads = [threading.Thread(target=once) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_a_virtual_folders_quota_has_its_bars_under_the_accounts(emulator, browser, tmp_path):
    proc, _ = folder_admin_server(str(tmp_path / "folders"), emulator.port)
    with proc, screenshot_on_failure(browser, tmp_path, "folders"):
        ftp = log_in(proc, user="fone", password="fone-pw")
        ftp.storbinary("STOR /pool/a.bin", io.BytesIO(b"f" * MIB))
        ftp.quit()
        sign_in(browser, proc, RO_TOKEN)
        bars = "return [...document.querySelectorAll('#folder-quotas progress')]" \
               ".map((bar) => [bar.value, bar.max]);"
        wait_for(browser, lambda: browser.execute_script(bars) == [[MIB, 3 * MIB], [1, 7]],
                 "the folder's quota bars")
        row = browser.find_element(By.CSS_SELECTOR, "#folder-quotas tbody tr")
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells[0] == "pool" and cells[2] == "fone, ftwo", cells
        assert "1.0 MiB of 3.0 MiB" in cells[3] and "1 of 7 files" in cells[3], cells


def server_fact(driver: WebDriver, name: str) -> Optional[str]:
    """What the server panel says after ``name`` ("Master", "State", ...)."""
    return driver.execute_script(
        "const term = [...document.querySelectorAll('#server dt')]"
        ".find((dt) => dt.textContent === arguments[0]);"
        "return term ? term.nextElementSibling.textContent : null;", name)


def test_a_graceful_stop_shows_as_the_servers_state(emulator, browser, tmp_path, area):
    """While a graceful stop waits for an upload, the console's server panel says the server
    is stopping gracefully, not running."""
    proc = admin_server(str(tmp_path / "stopping"), emulator.port)
    with proc, screenshot_on_failure(browser, tmp_path, "stopping"):
        sign_in(browser, proc, RO_TOKEN)
        assert server_fact(browser, "State") == "running"
        ftp = log_in(proc)
        upload = HeldUpload(ftp, f"{area}.bin", 2 * MIB)
        upload.send(MIB)
        proc.proc.send_signal(signal.SIGQUIT)
        wait_for(browser, lambda: server_fact(browser, "State") == (
            "stopping gracefully: new connections refused, then the server exits"),
            "the state shown as stopping gracefully")
        upload.send(MIB)
        upload.conn.close()
        assert ftp.voidresp().startswith("226")
        ftp.close()
        assert proc.proc.wait(60) == 0


def test_lifting_a_ban_lets_the_address_log_in(console, browser, tmp_path):
    _fail_logins(console, "127.0.0.21", 3)  # max_login_failures = 3
    with pytest.raises(ftplib.error_temp, match="421 Too many failed logins"):
        log_in(console, "127.0.0.21")
    with screenshot_on_failure(browser, tmp_path, "lift"):
        sign_in(browser, console, RW_TOKEN)
        row = wait_for(browser, lambda: ban_row(browser, "127.0.0.21"), "the ban listed")
        assert row.find_elements(By.TAG_NAME, "td")[1].text == "3"  # failures
        row.find_element(By.CSS_SELECTOR, "button.lift").click()
        said(browser, "127.0.0.21: ban lifted")
        wait_for(browser, lambda: ban_row(browser, "127.0.0.21") is None, "the ban gone")
    log_in(console, "127.0.0.21").quit()


def test_the_bans_panel_says_whose_ban_the_node_holds(emulator, browser, tmp_path):
    """A node's own ban and a copy of another node's (restored from its bans file, as its
    start restores both), and an address with a failed login only: the Whose column says
    own, copy and -, as ``cosftpctl bans``'s WHOSE does. Found: the panel did not say."""
    proc = admin_server(str(tmp_path / "node"), emulator.port, max_login_failures="3")
    until = int(time.time()) + 600
    os.makedirs(proc.log_dir, exist_ok=True)
    saved = f"{proc.log_dir}/cosftp.pid.bans"
    with open(saved, "w", encoding="ascii") as handle:
        json.dump({"bans": [{"address": "127.0.0.41", "until": until},
                            {"address": "127.0.0.42", "until": until, "copy": True}]}, handle)
    os.chmod(saved, 0o600)  # as the master writes it
    with proc, screenshot_on_failure(browser, tmp_path, "whose"):
        _fail_logins(proc, "127.0.0.43", 1)
        sign_in(browser, proc, RO_TOKEN)
        whose = {}
        for address in ("127.0.0.41", "127.0.0.42", "127.0.0.43"):
            row = wait_for(browser, lambda address=address: ban_row(browser, address),
                           f"{address} listed")
            whose[address] = row.find_elements(By.TAG_NAME, "td")[4].text
        assert whose == {"127.0.0.41": "own", "127.0.0.42": "copy", "127.0.0.43": "-"}


def test_a_read_only_token_can_neither_kick_nor_lift(console, browser, tmp_path):
    api = AdminClient(admin_url(console))
    api.call("POST", "/bans", json={"address": "127.0.0.22"})
    ftp = log_in(console)
    session_id = logged_in_session(api)
    with screenshot_on_failure(browser, tmp_path, "read-only"):
        browser.get(f"{admin_url(console)}/")
        browser.find_element(By.ID, "signin-token").send_keys("not-a-token")
        browser.find_element(By.ID, "signin-button").click()
        wait_for(browser, lambda: browser.find_element(By.ID, "signin-error").text ==
                 "invalid token", "a wrong token refused")
        assert browser.execute_script("return sessionStorage.length") == 0
        sign_in(browser, console, RO_TOKEN)
        wait_for(browser, lambda: session_row(browser, session_id) and
                 ban_row(browser, "127.0.0.22"), "the session and the ban listed")
        assert browser.find_element(By.ID, "whoami").text == "token viewer (read-only)"
        assert browser.find_elements(By.CSS_SELECTOR, "button.kick, button.lift") == []
        assert not browser.find_element(By.ID, "reload").is_displayed()
        assert not browser.find_element(By.ID, "ban-form").is_displayed()
        # A console changed to show the buttons anyway: the API refuses the token.
        answers = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const token = sessionStorage.getItem("cosftp-admin-token");
            const headers = {Authorization: "Bearer " + token};
            Promise.all([`/api/v1/sessions/${arguments[0]}`, "/api/v1/bans/127.0.0.22"].map(
                (path) => fetch(path, {method: "DELETE", headers}).then((r) => r.status)))
              .then(done);""", session_id)
        assert answers == [403, 403]
    ftp.voidcmd("NOOP")  # not kicked
    assert "127.0.0.22" in {b["address"] for b in api.get("/bans")["bans"]}
    ftp.quit()
    api.call("DELETE", "/bans/127.0.0.22")


ATTACK = """<!doctype html><title>cute cats</title>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" action="{admin}/api/v1/bans" target="sink">
  <input name="address" value="127.0.0.24"></form>
<p id="out">running</p>
<script>
const results = [String(sessionStorage.getItem("cosftp-admin-token"))];
document.getElementById("f").submit();
const attempt = (init) => fetch("{admin}/api/v1/bans/127.0.0.23", init)
  .then((r) => "answered " + r.status, (e) => e.name);
attempt({{method: "DELETE", credentials: "include"}})
  .then((r) => {{ results.push(r); return attempt({{method: "DELETE",
    headers: {{Authorization: "Bearer guessed"}}}}); }})
  .then((r) => {{ results.push(r); document.getElementById("out").textContent =
    results.join(" "); }});
</script>"""


@contextlib.contextmanager
def attacker_site(admin: str) -> Iterator[str]:
    """Another origin (another port) serving a page that tries to change the server."""
    page = ATTACK.format(admin=admin).encode("utf-8")

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    server = QuietHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cross_site_page_cannot_act_with_the_consoles_token(console, browser, tmp_path):
    api = AdminClient(admin_url(console))
    api.call("POST", "/bans", json={"address": "127.0.0.23"})
    with screenshot_on_failure(browser, tmp_path, "cross-site"), \
            attacker_site(admin_url(console)) as evil:
        sign_in(browser, console, RW_TOKEN)  # the token is in the console's sessionStorage
        assert browser.get_cookies() == []  # and in no cookie
        browser.get(evil)
        out = wait_for(browser, lambda: (text := browser.find_element(By.ID, "out").text)
                       != "running" and text, "the attacking page's attempts")
        # It cannot read the token; both fetches fail in the browser (no CORS granted).
        assert out == "null TypeError TypeError"
        browser.get(f"{admin_url(console)}/")  # the form's answer went to the hidden frame
    bans = {b["address"] for b in api.get("/bans")["bans"]}
    assert "127.0.0.23" in bans and "127.0.0.24" not in bans
    api.call("DELETE", "/bans/127.0.0.23")
