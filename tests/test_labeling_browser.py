"""The labeling page in a real browser (headless Chromium through Selenium): labels by
clicks and keys end up in a store that ``ray-rewards train`` trains on; two people
label at once without a query answered twice; the server killed with SIGKILL
mid-session loses no answer sent before."""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from test_labeling import ENV, Servers, answer_files, write_pairs

from ray_rewards.labeling import LabelingService
from ray_rewards.preferences import AsyncGatherer
from ray_rewards.train import schemas

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BUTTONS = {1: "left", 0: "right", 0.5: "equal", "skip": "skip"}
KEYS = {1: Keys.ARROW_LEFT, 0: "2", 0.5: "=", "skip": "s"}


@pytest.fixture
def serve():
    servers = Servers()
    yield servers.start
    servers.close()


@pytest.fixture
def browsers():
    """``make() -> driver``: headless Chromium windows, each its own profile."""
    made = []

    def make():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--disable-gpu", "--window-size=1200,860"):
            options.add_argument(arg)
        if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root
            options.add_argument("--no-sandbox")
        options.add_argument("--disable-dev-shm-usage")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.quit()


def page_state(driver, key):
    return driver.execute_script(f"return window.rrLabeling.{key};")


def open_page(driver, url: str, name: str) -> None:
    driver.get(url)
    field = driver.find_element(By.ID, "labeler")
    field.clear()
    field.send_keys(name, Keys.ENTER)


def wait_for_query(driver, previous: str | None = None, timeout: float = 30) -> str | None:
    """The id of the query the page shows once it is ready for an answer and not
    ``previous``; None once the page says it is all done."""

    def ready(d):
        return d.execute_script(
            """
            const id = document.body.dataset.query || "";
            if (id && id !== arguments[0] && !document.getElementById("left").disabled)
              return {id};
            if (document.getElementById("message").textContent.startsWith("All done"))
              return {id: null};
            return false;
            """,
            previous or "",
        )

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(ready)["id"]


def act(driver, how: str, preference) -> None:
    if how == "click":
        driver.find_element(By.ID, BUTTONS[preference]).click()
    else:
        driver.find_element(By.TAG_NAME, "body").send_keys(KEYS[preference])


def wait_acked(driver, count: int, timeout: float = 30) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script("return window.rrLabeling.acked.length;") >= count
    )


def as_float(preference) -> float:
    return math.nan if preference == "skip" else float(preference)


def test_label_by_clicks_and_keys_then_train(tmp_path, serve, browsers, monkeypatch):
    source = write_pairs(tmp_path, 12)
    env = ENV if _has_pygame() else None  # frames when pygame can draw them, else plots
    service = LabelingService(source, store=tmp_path / "labels", env_id=env, budget=10)
    server, _ = serve(service)
    driver = browsers()
    open_page(driver, server.url, "ann")
    plan = [("click", p) for p in (1, 0, 0.5, "skip", 1, 0)]
    plan += [("key", p) for p in (1, 0.5, "skip", 0, 1, 0.5)]
    previous, shown = None, []
    for i, (how, preference) in enumerate(plan):
        previous = wait_for_query(driver, previous)
        shown.append(previous)
        if i == 2:
            _screenshot(driver)
        act(driver, how, preference)
        wait_acked(driver, i + 1)
    assert wait_for_query(driver, previous) is None  # 10 labels: the budget
    assert driver.find_element(By.ID, "counter").text == "10 / 10 labeled"
    assert page_state(driver, "errors") == []
    acked = page_state(driver, "acked")
    assert [a["id"] for a in acked] == shown and len(set(shown)) == 12
    # Every pair after the first was leased and loaded while the one before showed.
    log = page_state(driver, "shown")
    assert all(s["ready"] for s in log) and all(s["prefetched"] for s in log[1:]), log
    if env:
        assert (
            driver.execute_script("return document.querySelector('#view1 img').naturalWidth;")
            == 125
        )  # Pendulum's 500-pixel frames shrunk to at most 160

    # The queue holds exactly these answers, with who gave them ...
    answers = answer_files(tmp_path / "labels.queue")
    assert answers["query_id"] == shown and set(answers["labeler"]) == {"ann"}
    expected = [as_float(p) for _, p in plan]
    np.testing.assert_array_equal(answers["preference"], expected)
    # ... and the store the labeled pairs (skips left out): the source's rows.
    store = schemas.read_numpy(tmp_path / "labels")
    pairs = schemas.read_numpy(source)
    labeled = [(q, p) for q, p in zip(shown, expected) if p == p]
    rows = [int(q.rsplit("-", 1)[1]) for q, _ in labeled]
    assert len(store["preference"]) == 10
    np.testing.assert_array_equal(store["obs_1"], pairs["obs_1"][rows])
    np.testing.assert_array_equal(store["actions_2"], pairs["actions_2"][rows])
    np.testing.assert_array_equal(store["preference"], [p for _, p in labeled])

    # `ray-rewards train` trains on the store (in process: engine local, no Ray).
    from ray_rewards.cli import main

    config = tmp_path / "train.yaml"
    settings = {
        "train_data": "labels",
        "env": ENV,
        "net_kwargs": {"hid_sizes": [8]},
        "epochs": 2,
        "batch_size": 4,
        "engine": "local",
        "output": "reward_net.pt",
        "storage_path": "ray_train",
    }
    config.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert "after 2 epochs" in result.output and (tmp_path / "reward_net.pt").exists()


def test_two_labelers_at_once_never_get_the_same_query(tmp_path, serve, browsers):
    # A job's queue without frames: the page plots the observations.
    pairs = schemas.read_numpy(write_pairs(tmp_path, 12))
    pairs.pop("preference")
    AsyncGatherer(tmp_path / "queue").submit(pairs)
    server, _ = serve(LabelingService(tmp_path / "queue", budget=9))
    drivers = {name: browsers() for name in ("ann", "bob")}
    for name, driver in drivers.items():
        open_page(driver, server.url, name)
    shown: dict[str, list[str]] = {name: [] for name in drivers}
    plots: dict[str, int] = {}
    failures = []

    def label(name, driver, preferences):
        try:
            previous = None
            for i in range(100):
                previous = wait_for_query(driver, previous)
                if previous is None:
                    return
                shown[name].append(previous)
                plots.setdefault(name, len(driver.find_elements(By.CSS_SELECTOR, ".view canvas")))
                act(driver, "key", preferences[i % len(preferences)])
        except Exception as err:  # reported below, in the test's thread
            failures.append((name, err))

    threads = [
        threading.Thread(target=label, args=("ann", drivers["ann"], [1, 0, 0.5])),
        threading.Thread(target=label, args=("bob", drivers["bob"], [0, "skip", 1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    for driver in drivers.values():
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return window.rrLabeling.sending.size;") == 0
        )
        assert page_state(driver, "errors") == []
    assert not set(shown["ann"]) & set(shown["bob"])  # no query shown to both
    assert shown["ann"] and shown["bob"] and plots == {"ann": 2, "bob": 2}
    answers = answer_files(tmp_path / "queue")
    assert len(answers["query_id"]) == len(set(answers["query_id"]))  # none answered twice
    for name in drivers:
        by = {q for q, who in zip(answers["query_id"], answers["labeler"]) if who == name}
        assert by == set(shown[name])
    assert sum(p == p for p in answers["preference"]) == 9  # the budget, skips aside


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m ray_rewards.labeling.command ...`` with its output read in a thread."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray_rewards.labeling.command", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def stop(self, sig: int) -> int:
        """Send ``sig``; the exit code, once all output is read."""
        self.proc.send_signal(sig)
        code = self.proc.wait(10)
        self.reader.join(10)
        return code

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            match = re.match(r"open (http://\S+) to label", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no URL in {''.join(self.output)!r}")


def test_server_killed_mid_session_loses_no_answer(tmp_path, browsers):
    source = write_pairs(tmp_path, 8)
    port = _free_port()
    args = [source, "--store", str(tmp_path / "labels"), "--port", str(port), "--budget", "8"]
    server = ServerProcess(args)
    driver = browsers()
    open_page(driver, server.url(), "ann")
    previous, shown = None, []
    for i, preference in enumerate((1, 0, 0.5)):
        previous = wait_for_query(driver, previous)
        shown.append(previous)
        act(driver, "key", preference)
        wait_acked(driver, i + 1)
    before = [a["id"] for a in page_state(driver, "acked")]

    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    # The next pair is on the page already; its answer waits for the server.
    previous = wait_for_query(driver, previous)
    shown.append(previous)
    act(driver, "key", 1)
    WebDriverWait(driver, 10).until(lambda d: "retrying" in d.find_element(By.ID, "message").text)

    server = ServerProcess(args)
    try:
        server.url()
        wait_acked(driver, 4)
        for i, preference in enumerate((0, "skip", 1)):
            previous = wait_for_query(driver, previous)
            shown.append(previous)
            act(driver, "key", preference)
            wait_acked(driver, 5 + i)
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0
    assert "stopped; every acknowledged answer is on disk" in "".join(server.output)
    assert page_state(driver, "errors") == []
    assert len(set(shown)) == 7  # nothing answered was served again
    answers = answer_files(tmp_path / "labels.queue")
    assert sorted(answers["query_id"]) == sorted(shown)
    assert set(before) <= set(answers["query_id"])
    store = schemas.read_numpy(tmp_path / "labels")
    assert sorted(store["preference"]) == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]


def _has_pygame() -> bool:
    try:
        import pygame  # noqa: F401
    except ImportError:
        return False
    return True


def _screenshot(driver) -> None:
    """Save the page to $RAY_REWARDS_SCREENSHOT (docs/labeling_page.png), if set."""
    path = os.environ.get("RAY_REWARDS_SCREENSHOT")
    if path:
        ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        assert driver.save_screenshot(path), path
