"""The web page in a real headless browser (Debian's chromium + chromium-driver through selenium): the service runs
under uvicorn on a free port, the page uploads a generated WAV with a transcript, and the rendered top label and bars
are those the API gives for the same clip; a screenshot is saved in the test's folder. Skips when the browser or its
driver is missing (`.ci/run` installs them)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers_serving import LABELS, tiny_feature_run, wav_bytes

from mer.serving.app import Settings, create_app
from mer.serving.audio_io import decode_bytes
from mer.serving.predict import Clip, load_predictor

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium / chromedriver (apt-get install chromium "
                    "chromium-driver): the browser test of the web page is skipped")
def test_page_uploads_a_wav_and_shows_the_prediction(tmp_path):
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    del selenium
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = tiny_feature_run(tmp_path / "svc")
    predictor = load_predictor(run)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(model=str(run), port=port), predictor),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    clip = tmp_path / "clip.wav"
    data = wav_bytes(3, 1.2, 7)
    clip.write_bytes(data)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=900,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        assert "Emotion recognition" in driver.page_source
        driver.find_element(By.ID, "audio-file").send_keys(str(clip))
        driver.find_element(By.ID, "text").send_keys("it is okay")
        driver.find_element(By.ID, "context").send_keys("A: how are you?")
        driver.find_element(By.ID, "analyze").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "status").text in ("done",)
                                        or "error" in d.find_element(By.ID, "status").get_attribute("class"))
        assert driver.find_element(By.ID, "status").text == "done", driver.find_element(By.ID, "status").text
        top = driver.find_element(By.ID, "top").text.lower()
        shown = {row.get_attribute("data-label"): float(row.find_element(By.CLASS_NAME, "bar-value").text.rstrip("%"))
                 for row in driver.find_elements(By.CLASS_NAME, "bar-row")}
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
    want = predictor.predict([Clip(decode_bytes(data), "it is okay")]).probs[0]
    assert top == LABELS[int(want.argmax())]
    assert list(shown) == LABELS and abs(sum(shown.values()) - 100) < 0.5
    for k, name in enumerate(LABELS):
        assert shown[name] == pytest.approx(100 * want[k], abs=0.051)
    assert (tmp_path / "page.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'page.png'}")
