"""JupyterLab as people use it: the notebooks run in a real browser, and the tier explorer answers its slider.

JupyterLab starts from this Python on 127.0.0.1 (a free port, a temporary token, a temporary copy of two
notebooks, its own settings and workspace folders); Debian's Chromium, headless, is driven through
Selenium and chromedriver. For notebook 00 and the explorer (06) the test clicks *Run > Run All Cells*,
waits for every code cell to finish (the kernel idle by the REST API, every prompt numbered), and asserts
that no cell shows a traceback and that tables and figures are displayed. On the explorer it moves the
ratio slider with the arrow keys, checks that the numbers change, times how long they take to come back
for a ratio already measured (< 1 s), and saves a screenshot (``$REFT_SCREENSHOT``, default
``<output root>/figures/explorer_screenshot.png``). JupyterLab is shut down by its PID in the teardown.
Skipped, with the reason, where Chromium, chromedriver or selenium is missing (``make test`` installs them).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reft import report

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART, EXPLORER = "00_quickstart.ipynb", "06_tier_explorer.ipynb"
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"
RUN_TIMEOUT = 300  # seconds for one notebook's Run All
SETTINGS = {  # JupyterLab user settings for the test: every cell in the DOM, no news or update checks
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver)"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@dataclass
class Lab:
    url: str
    token: str
    log: Path

    def api(self, path: str, method: str = "GET") -> object:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def kernel_state(self, notebook: str) -> str | None:
        for s in self.api("/api/sessions"):
            if s["path"].endswith(notebook) and s.get("kernel"):
                return self.api(f"/api/kernels/{s['kernel']['id']}")["execution_state"]
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab")
    nbdir = tmp / "notebooks"
    nbdir.mkdir()
    for name in (QUICKSTART, EXPLORER):
        shutil.copy(ROOT / "notebooks" / name, nbdir / name)
    for rel, value in SETTINGS.items():
        (tmp / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "settings" / rel).write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
        f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]  # fmt: skip
    log = tmp / "jupyterlab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Lab(f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                server.api("/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield server
    finally:
        try:
            for k in server.api("/api/kernels"):
                server.api(f"/api/kernels/{k['id']}", method="DELETE")
        except OSError:
            pass
        proc.send_signal(signal.SIGTERM)  # JupyterLab by its PID: terminate, wait, then kill
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1500,1500",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _visible(driver: webdriver.Chrome, css: str) -> list:
    """Elements matching ``css`` in the notebook on show (a restored tab may hide another one)."""
    return driver.find_elements(By.CSS_SELECTOR, f"{ACTIVE} {css}")


def _tracebacks(driver: webdriver.Chrome) -> list[str]:
    return [o.text for o in _visible(driver, ".jp-OutputArea-output") if "Traceback" in o.text]


def run_all(driver: webdriver.Chrome, lab: Lab, notebook: str) -> float:
    """Open ``notebook``, click Run > Run All Cells, wait until every code cell has run; returns seconds."""
    driver.get(f"{lab.url}/lab/tree/{notebook}?reset&token={lab.token}")  # reset: no tabs restored
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: _visible(d, ".jp-CodeCell"))
    wait.until(lambda d: lab.kernel_state(notebook) == "idle")
    t0 = time.monotonic()
    driver.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and normalize-space(.)='Run']").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "li.lm-Menu-item[data-command='runmenu:run-all']"))
    driver.find_element(By.CSS_SELECTOR, "li.lm-Menu-item[data-command='runmenu:run-all']").click()
    done_twice = 0
    while done_twice < 2:  # two polls in a row: the kernel idle and every code cell numbered
        assert time.monotonic() - t0 < RUN_TIMEOUT, f"{notebook}: Run All did not finish in {RUN_TIMEOUT} s"
        errors = _tracebacks(driver)
        assert not errors, f"{notebook} shows an error:\n" + "\n".join(errors)[-3000:]
        prompts = driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)",
            f"{ACTIVE} .jp-CodeCell .jp-InputArea-prompt",
        )
        numbered = bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts)
        done_twice = done_twice + 1 if numbered and lab.kernel_state(notebook) == "idle" else 0
        time.sleep(1)
    return time.monotonic() - t0


def _outputs(driver: webdriver.Chrome, css: str) -> list:
    return _visible(driver, f".jp-OutputArea-output {css}")


def test_quickstart_runs_in_the_browser(lab: Lab, browser: webdriver.Chrome) -> None:
    seconds = run_all(browser, lab, QUICKSTART)
    print(f"\n{QUICKSTART}: Run All Cells took {seconds:.1f} s in Chromium")
    assert len(_outputs(browser, "table")) >= 3  # split, models, central curve
    assert len(_outputs(browser, "img")) >= 2  # partitions, central curve


def test_explorer_answers_its_slider(lab: Lab, browser: webdriver.Chrome) -> None:
    seconds = run_all(browser, lab, EXPLORER)
    print(f"\n{EXPLORER}: Run All Cells took {seconds:.1f} s in Chromium")
    assert _outputs(browser, "table.dataframe") and _outputs(browser, "img")  # the static table and figure
    wait = WebDriverWait(browser, 60, poll_frequency=0.02)
    explorer = wait.until(lambda d: _visible(d, ".reft-explorer"))[0]
    numbers = explorer.find_element(By.CSS_SELECTOR, ".reft-explorer-numbers")
    status = explorer.find_element(By.CSS_SELECTOR, ".reft-explorer-status")
    wait.until(lambda d: "figure in" in status.text)  # the first update is complete
    slider = explorer.find_element(
        By.XPATH, ".//div[contains(@class,'widget-slider')][.//label[normalize-space()='pruning ratio']]"
    )
    readout, handle = (slider.find_element(By.CSS_SELECTOR, c) for c in (".widget-readout", ".noUi-handle"))
    start, first = readout.text, numbers.text
    assert "r=0.50" in first and "params" in first

    handle.send_keys(Keys.ARROW_RIGHT)  # a ratio not measured yet: latency measured now
    t0 = time.perf_counter()
    wait.until(lambda d: numbers.text != first and "numbers in" in status.text)
    new_s, moved = time.perf_counter() - t0, readout.text
    wait.until(lambda d: "figure in" in status.text)  # the kernel is done with this move
    assert moved != start and f"r={float(moved):.2f}" in numbers.text and "measured now" in status.text
    replaced = _outputs(browser, ".reft-static-replaced")  # the static figure, now out of date, gave way to a note
    assert replaced and f"r={float(start):.2f}" in replaced[0].text

    handle.send_keys(Keys.ARROW_LEFT)  # back to a ratio measured before: cached latency
    t0 = time.perf_counter()
    wait.until(lambda d: numbers.text == first and "cached" in status.text)
    back_s = time.perf_counter() - t0
    print(f"numbers after a move to a new ratio ({moved}): {new_s:.3f} s; back to a measured one ({start}): "
          f"{back_s:.3f} s in the browser; kernel side: {status.text}")  # fmt: skip
    assert back_s < 1.0, f"the numbers took {back_s:.2f} s to update for a ratio already measured"

    wait.until(lambda d: "figure in" in status.text and explorer.find_elements(By.CSS_SELECTOR, "img"))
    time.sleep(1)  # let the figure of the last move paint
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", explorer)
    shot = Path(os.environ.get("REFT_SCREENSHOT") or report.root() / "figures" / "explorer_screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
