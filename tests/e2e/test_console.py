"""The console in a real browser: Debian's Chromium, driven by Selenium, with Chrome's virtual
authenticator as the executives' passkeys (no browser download: the system chromium and
chromedriver are named explicitly and Selenium Manager stays offline).

The scenario of issue 15: an executive (alice) registers a passkey in the console from a
one-time enrollment link; the signer set is rotated to include it — alice signs the new set
in the browser, four dev executives sign it with `custos signer sign-set` and their
signatures are pasted into the console, which installs it; a halt is proposed, two CLI
keys sign it, alice signs it in the console with her passkey (challenge = the order's
digest, computed in the page from the bytes it shows) and the halt executes: two real
agents, pinned to signer-set version 1 at enrollment, follow the rotation and accept the
passkey signature themselves, stop their supervised workloads and ack; the console shows
the acks arriving and the time-to-halt plot. An auditor (audrey) then sees the incident
the fleet raised on its 72-hour clock and verifies the audit log.

Screenshots of the main pages go to a directory the test prints (and to
$CUSTOS_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from custos.console.tls import spki_sha256_b64
from tests.e2e.conftest import AgentProc, make_weights, server_config, unique, wait_until
from tests.servers.custos import CUSTOS, DevServer
from tests.servers.ports import free_port, wait_for_port

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 30

HOLD = """
import mmap, os, sys, time
d = os.environ["CUSTOS_ARTIFACT_DIR"]
with open(os.path.join(d, "model-00001.safetensors"), "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
print("mapped", flush=True)
time.sleep(300)
"""


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        msg = f"the console's browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


class ConsoleProc:
    """`custos console --dev` as a real process beside a dev server."""

    def __init__(self, server: DevServer) -> None:
        self.server = server
        self.port = free_port()
        self.origin = f"https://localhost:{self.port}"
        self.log_path = server.data_dir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.server.cli("console", *args, "--dev", "--data-dir", str(self.server.data_dir), check=True)

    def add_user(self, name: str, role: str) -> str:
        out = json.loads(self.cli("add-user", name, "--role", role, "-o", "json").stdout)
        return str(out["enrollment_token"])

    def start(self) -> ConsoleProc:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*CUSTOS, "console", "--dev", "--data-dir", str(self.server.data_dir),
                                      "--listen", f"127.0.0.1:{self.port}"], env=self.server.client_env(),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(self.port, timeout=30)
        return self

    @property
    def spki(self) -> str:
        return spki_sha256_b64((self.server.data_dir / "console" / "tls" / "console.pem").read_bytes())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class Browser:
    """Headless Chromium with a virtual platform authenticator (user-verifying, resident keys)."""

    def __init__(self, profile: Path, spki: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--window-size=1320,1000", f"--user-data-dir={profile}",
                    # The dev certificate is trusted by its key, as web platform tests do: WebAuthn
                    # needs a secure context without certificate errors.
                    f"--ignore-certificate-errors-spki-list={spki}"):
            opts.add_argument(arg)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.add_virtual_authenticator(VirtualAuthenticatorOptions(
            protocol="ctap2", transport="internal", has_resident_key=True, has_user_verification=True,
            is_user_verified=True))
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def el(self, element_id: str, timeout: float = WAIT) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(ec.presence_of_element_located((By.ID, element_id)))

    def click(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.driver, WAIT).until(ec.element_to_be_clickable((By.ID, element_id))).click()

    def text(self, element_id: str) -> str:
        return str(self.el(element_id).text)

    def wait_text(self, element_id: str, pred: Any, what: str, timeout: float = WAIT) -> str:
        def probe() -> str | None:
            try:
                t = self.driver.find_element("id", element_id).text
            except Exception:  # noqa: BLE001 - not there yet (the page re-renders while polling)
                return None
            return str(t) if pred(t) else None

        try:
            return str(wait_until(probe, timeout, what, interval=0.2))
        except AssertionError as exc:
            self.screenshot("failure")
            page = self.driver.find_element("id", "main").text[:1500]
            raise AssertionError(f"{exc}\nbanner: {self.banner()!r}\npage: {page}") from None

    def banner(self) -> str:
        return str(self.driver.find_element("id", "banner").text)

    def fetch_text(self, path: str) -> str:
        """GET ``path`` from the page (with its session cookie) and return the body."""
        return str(self.driver.execute_async_script(
            "fetch(arguments[0], {credentials: 'same-origin'}).then(r => r.text()).then(arguments[1])", path))

    def screenshot(self, name: str) -> Path:
        """The whole page, not only the viewport."""
        import base64

        m = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = m.get("cssContentSize") or m["contentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
        path = self.shots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    _need_browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or a driver
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    srv = DevServer(tmp_path / "cp", extra=["--config", str(server_config(tmp_path / "cp.toml"))]).start()
    made: dict[str, Any] = {"server": srv, "agents": [], "console": None, "browser": None}
    try:
        yield made
    finally:
        if made["browser"] is not None:
            made["browser"].quit()
        if made["console"] is not None:
            made["console"].stop()
        for ag in made["agents"]:
            ag.stop()
        srv.stop()


def test_executive_signs_a_halt_with_a_passkey_in_the_console(tmp_path: Path, stack: dict[str, Any]) -> None:
    srv: DevServer = stack["server"]
    keys = srv.data_dir / "signers"

    # The fleet: a covered model, two agents (pinned to signer-set v1 at enrollment), a
    # supervised workload on each, and an unregistered weight file that becomes an incident.
    srv.cli("model", "register", "frontier", "--training-flops", "3e26", check=True)
    art = json.loads(srv.cli("push", "frontier", str(make_weights(tmp_path / "w", 11)), "-o", "json",
                             check=True).stdout)
    agents = []
    for letter in "ab":
        ag = AgentProc(tmp_path / letter, unique(f"gpu-{letter}"), srv)
        ag.enroll()
        agents.append(ag.start())
        stack["agents"].append(ag)
    for ag in agents:
        wait_until(ag.lease_live, 30, f"{ag.name}'s live lease")
    srv.grant("frontier", hosts=[ag.name for ag in agents])
    hold = tmp_path / "hold.py"
    hold.write_text(HOLD)
    pids = []
    for ag in agents:
        res = ag.run("--model", "frontier", "--artifact", art["id"], "--detach", "-o", "json", "--",
                     sys.executable, str(hold))
        assert res.returncode == 0, res.stderr
        pids.append(int(json.loads(res.stdout)["pid"]))
    (agents[1].root / "leak").mkdir()
    (agents[1].root / "leak" / "model.safetensors").write_bytes(os.urandom(64 << 10))

    console = stack["console"] = ConsoleProc(srv).start()
    token = console.add_user("alice", "executive")
    b = stack["browser"] = Browser(tmp_path / "profile", console.spki, tmp_path / "screenshots")
    print(f"\nconsole screenshots: {b.shots}")

    # 1. Alice registers a passkey with her one-time link and is logged in.
    b.get(f"{console.origin}/#/enroll/{token}")
    b.click("enroll-button")
    b.wait_text("who-user", lambda t: t.startswith("alice"), "alice logged in")
    assert "#/enroll" not in b.driver.current_url  # the token left the address bar
    b.get(f"{console.origin}/#/fleet")
    b.wait_text("main", lambda t: all(ag.name in t for ag in agents) and "frontier" in t, "the fleet page")
    b.screenshot("1-fleet")

    # 2. The rotation to v2 adding alice's passkey: she signs it in the browser, four CLI keys
    # (the rotate threshold of v1) sign the file the console serves, the console installs it.
    b.get(f"{console.origin}/#/signers")
    b.click("propose-passkey")
    b.click("sign-rotation")
    b.wait_text("new-progress", lambda t: t.startswith("1 of"), "alice's signature on the new set")
    rid = b.driver.current_url.rsplit("/", 1)[1]
    set_file = tmp_path / "signer-set-v2.json"
    set_file.write_bytes(b.fetch_text(f"/api/signers/rotations/{rid}/set").encode())
    for i in (1, 2, 3, 4):
        sig = tmp_path / f"set.exec{i}.sig.json"
        srv.cli("signer", "sign-set", str(set_file), "--key", str(keys / f"exec{i}.key"), "--out", str(sig),
                role="executive", check=True)
        box = b.el("rotation-signatures")
        box.clear()
        box.send_keys(sig.read_text())
        b.click("add-signatures")
        b.wait_text("old-progress", lambda t, n=i: t.startswith(f"{n} of"), f"exec{i}'s signature")
    assert b.text("new-progress").startswith("5 of 4")
    b.screenshot("2-rotation-ready")
    b.click("install-rotation")
    b.wait_text("banner", lambda t: "version 2 installed" in t, "the rotation installed")
    shown = json.loads(srv.cli("signer", "show", "-o", "json", check=True).stdout)
    assert shown["version"] == 2
    assert {"alice": "webauthn"}.items() <= {k["name"]: k["keytype"] for k in shown["keys"]}.items()

    # 3. A halt: two CLI signatures, then alice's passkey in the console makes the quorum.
    oid = srv.propose("halt", "frontier")
    assert srv.sign(oid, 1, 2)["state"] == "proposed"
    b.get(f"{console.origin}/#/orders/{oid}")
    b.el("sign-order")
    assert b.text("object-id") == oid
    b.wait_text("main", lambda t: "✓ matches the order id" in t, "the page's own digest check")
    assert b.text("sig-progress") == "2 of 3"
    pre = b.text("signable-bytes")
    assert pre.startswith("custos.v1.order\\0{") and oid not in pre
    b.screenshot("3-order-before-signing")
    b.click("sign-order")
    b.wait_text("banner", lambda t: "Signed with your passkey" in t, "the passkey signature attached")
    b.wait_text("verdict", lambda t: t.startswith("Verdict:"), "the live progress")
    b.screenshot("4-shutdown-in-progress")
    # Complete, or incomplete only for what the agents themselves list as remaining (in some
    # containers pid 1 cannot be inspected): never still executing, never a host without an ack.
    b.wait_text("verdict", lambda t: t == "Verdict: complete" or (
        t.startswith("Verdict: incomplete — ") and t.endswith(" remaining on 2 hosts") and "," not in t),
        "the halt to complete", timeout=60)
    b.wait_text("acked", lambda t: t == "2 of 2", "both acks shown")
    b.el("halt-plot")
    b.screenshot("5-shutdown-complete")

    # The halt executed and both agents accepted the passkey signature themselves.
    report = json.loads(srv.cli("order", "report", oid, "-o", "json", check=True).stdout)
    assert report["state"] == "complete"
    by_host = {h["host"]: h for h in report["hosts"]}
    for ag in agents:
        h = by_host[ag.name]
        assert h["acked"] and h["verified"] and h["outcome"] == "halted", h
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    status = json.loads(srv.cli("order", "status", oid, "-o", "json", check=True).stdout)
    alice_kid = next(k["key_id"] for k in shown["keys"] if k["name"] == "alice")
    assert alice_kid in status["signed_by"] and len(status["signed_by"]) == 3

    # 4. An auditor: the incident on its 72-hour clock, and the audit log verified.
    wait_until(lambda: json.loads(srv.cli("incident", "list", "-o", "json", check=True).stdout), 60,
               "an incident from the unregistered weight file")
    token = console.add_user("audrey", "auditor")
    b.click("logout")
    b.el("login-button")
    b.get(f"{console.origin}/#/enroll/{token}")
    b.click("enroll-button")
    b.wait_text("who-user", lambda t: t.startswith("audrey"), "audrey logged in")
    b.get(f"{console.origin}/#/incidents")
    b.wait_text("main", lambda t: " left" in t, "the 72-hour countdown")
    b.screenshot("6-incidents")
    b.get(f"{console.origin}/#/audit")
    b.click("verify-audit")
    b.wait_text("audit-result", lambda t: "audit log verifies" in t, "the audit log verified")
    b.screenshot("7-audit")
    b.get(f"{console.origin}/#/access")
    b.wait_text("main", lambda t: "frontier" in t, "the access grants")
    b.screenshot("8-access")

    # Alice logs in again with her passkey (a fresh random challenge) after logging out.
    b.click("logout")
    user = b.el("login-user")
    user.send_keys("alice")
    b.click("login-button")
    b.wait_text("who-user", lambda t: t.startswith("alice"), "alice logged in again")

    target = os.environ.get("CUSTOS_SCREENSHOTS")
    if target:
        shutil.copytree(b.shots, target, dirs_exist_ok=True)
    assert "Traceback" not in console.log(), console.log()
