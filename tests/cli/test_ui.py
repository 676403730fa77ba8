"""`study-embed ui` as a black box: the real command (uvicorn) on a bank drained by
`study-embed drain`, connected as a read-only role, driven over HTTP and in a real browser
(Debian's headless Chromium through Selenium and Debian's ChromeDriver; `make deps` installs
them, with fonts-noto-cjk so that Hangul renders).

The browser test saves its screenshot of the search page as ui-search.png in UI_SCREENSHOT_DIR
(`make screenshot` sets it to docs/, the README's picture), else in pytest's tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from study_embed_dev.localdb import free_port
from study_embed_dev.vectors import bigram_vector

from ..conftest import url_for
from ..helpers import KOREAN, korean_bank, listener_env, question_links, run_cli, wait_until

ROLE = "se_ui_cli"


@pytest.fixture
def drained(db, db_url, bank, server):
    """The Korean bank, embedded by `study-embed drain` (the loopback server's bigram vectors),
    near-duplicates detected."""
    server.vector = bigram_vector
    ids = korean_bank(bank)
    r = run_cli("drain", env=listener_env(db_url, server))
    assert r.returncode == 0, r.stderr
    while db.execute("SELECT study_embed.detect_duplicates()").fetchone()[0]:
        pass
    return ids


@pytest.fixture
def reader(db, login) -> str:
    """A login with study_embed_app and SELECT on the app's tables: the UI's role."""
    login(ROLE, "study_embed_app", select=True)
    return url_for(db.info.dbname, user=ROLE)


@pytest.fixture
def ui(reader, server, spawn, drained) -> str:
    """`study-embed ui` running; its base URL."""
    port = free_port()
    proc = spawn("ui", env=listener_env(reader, server, UI_PORT=port))
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            return httpx.get(base + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=30, what="the UI to answer")
    return base


def test_search_on_a_drained_bank_lists_the_users_match_first_and_no_one_elses(ui, drained):
    r = httpx.get(f"{ui}/search", params={"user": drained["a"], "q": "광합성"})
    assert r.status_code == 200
    ids = question_links(r.text)
    assert ids[0] == drained["photo"]
    theirs = {drained["b_photo"], drained["b_secret"]}
    assert not theirs & set(ids) and "비밀B" not in r.text
    r = httpx.get(f"{ui}/search", params={"user": drained["b"], "q": "광합성"})
    assert question_links(r.text)[0] == drained["b_photo"]
    assert set(question_links(r.text)) <= theirs


def test_the_command_refuses_an_owner_and_bad_settings(db_url, server, drained):
    r = run_cli("ui", env=listener_env(db_url, server, UI_PORT=free_port()), timeout=30)
    assert r.returncode == 2
    assert "is a superuser" in r.stderr and "never as an owner" in r.stderr
    r = run_cli("ui", env=listener_env(db_url, server, UI_PORT="http"), timeout=30)
    assert r.returncode == 2 and "UI_PORT='http': must be a port number" in r.stderr


# -- in a real browser -----------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("Chromium and ChromeDriver are not installed: run `make deps`")
    options = Options()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,720",
        "--lang=ko-KR",
        # nothing leaves the machine (the network is closed here anyway)
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver), options=options)
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def test_in_a_browser_search_open_dismiss_and_see_nothing_of_another_user(
    ui, drained, browser, db, tmp_path
):
    wait = WebDriverWait(browser, 15)
    a = drained["a"]

    # search in Korean, as a person types it
    browser.get(f"{ui}/search?user={a}")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("광합성이 일어나는 소기관")
    browser.find_element(By.CSS_SELECTOR, "form.search button").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "ol.hits li a")))
    assert "q=%EA%B4%91%ED%95%A9%EC%84%B1" in browser.current_url  # 광합성…
    links = browser.find_elements(By.CSS_SELECTOR, "ol.hits li a")
    assert links[0].text == KOREAN["photo"][0]
    ids = [int(x.get_attribute("href").split("/questions/")[1].split("?")[0]) for x in links]
    assert ids[0] == drained["photo"] and drained["b_photo"] not in ids
    shots = Path(os.environ.get("UI_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "ui-search.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # open the first result
    links[0].click()
    wait.until(ec.url_contains(f"/questions/{drained['photo']}"))
    assert browser.find_element(By.TAG_NAME, "h1").text == KOREAN["photo"][0]
    correct = browser.find_element(By.CSS_SELECTOR, "ol.choices li.correct").text
    assert correct.startswith("엽록체")

    # dismiss the pair a typed twice: the database says it is closed
    pair = (drained["king"], drained["king_again"])

    def open_pair() -> bool:
        return bool(
            db.execute(
                "SELECT 1 FROM study_embed.duplicate_candidates WHERE user_id = %s"
                " AND question_id = %s AND duplicate_of = %s AND dismissed_at IS NULL",
                (a, *pair),
            ).fetchone()
        )

    assert open_pair()
    browser.find_element(By.LINK_TEXT, "중복 후보").click()
    wait.until(ec.url_contains("/duplicates?user="))
    button = browser.find_element(By.CSS_SELECTOR, f"button[value='{pair[0]}-{pair[1]}']")
    button.click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "p.notice")))
    assert not open_pair()
    assert KOREAN["king_again"][0] not in browser.page_source

    # another user's question id under a's name: nothing of it
    browser.get(f"{ui}/questions/{drained['b_secret']}?user={a}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "없는 문제"
    page = browser.page_source
    for text in (KOREAN["b_secret"][0], *KOREAN["b_secret"][1]):
        assert text not in page


def test_in_a_browser_a_draft_shows_its_duplicate_while_it_is_typed(ui, drained, browser, db):
    """Nothing is submitted: the page checks the draft after a pause in typing.  A rephrasing
    of a's photosynthesis question shows it; the same question negated, whose answer is
    another choice, shows nothing; nothing is saved."""
    wait = WebDriverWait(browser, 15)
    a = drained["a"]
    rows = db.execute("SELECT count(*) FROM study_questions").fetchone()[0]
    browser.get(f"{ui}/draft?user={a}")
    question = browser.find_element(By.NAME, "question")
    question.send_keys("광합성이 일어나는 세포 소기관은 어느 것인가?")
    for i, choice in enumerate(KOREAN["photo"][1], 1):
        browser.find_element(By.NAME, f"c{i}").send_keys(choice)
    browser.find_element(By.CSS_SELECTOR, "input[name=correct][value='2']").click()  # 엽록체
    link = f"#matches a[href='/questions/{drained['photo']}?user={a}']"
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, link)))
    shown = browser.find_elements(By.CSS_SELECTOR, "#matches ol.hits li a")
    assert [x.text for x in shown] == [KOREAN["photo"][0]]  # not b's copy
    assert "/draft?user=" in browser.current_url and "correct=2" in browser.current_url

    # one word away, another answer: no longer a duplicate
    question.clear()
    question.send_keys("광합성이 일어나지 않는 세포 소기관은?")
    browser.find_element(By.CSS_SELECTOR, "input[name=correct][value='1']").click()  # 미토콘드리아
    wait.until(ec.text_to_be_present_in_element((By.ID, "matches"), "중복 후보가 없습니다"))
    assert browser.find_elements(By.CSS_SELECTOR, "#matches ol.hits li a") == []
    assert db.execute("SELECT count(*) FROM study_questions").fetchone()[0] == rows


def test_without_the_ui_extra_the_command_says_how_to_install_it(db_url, server):
    code = (
        "import sys; sys.modules['uvicorn'] = None; "  # as if the extra were not installed
        "from study_embed.cli import main; sys.exit(main(['ui']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=listener_env(db_url, server),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "pip install 'study-embed[ui]'" in r.stderr and "uvicorn" in r.stderr
