"""The prompt explorer as a user and a client meet it: ``python app.py --checkpoint RUN`` started on a free port,
driven by a real headless Chromium (Playwright pointed at the system browser) and called through
``gradio_client``.

The browser test uploads a real image from ../shared/data (a synthetic test image when it is absent), types two
prompts, sees two outlines in their two colours (the served overlay is compared with the one computed here from
the same model), moves the threshold (no forward pass), presses "Does it read the text?", makes a mistake (an
empty prompt box: a message in the page, the app keeps serving), and saves the screenshot docs/img/app.png.
Skipped, with the reason printed, only where no Chromium can be found (.ci/run installs the Debian package) or
the app's extra (requirements-app.txt) is not installed.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from vlsm.app import PromptExplorer
from vlsm.app.explorer import PALETTE
from vlsm.app.inputs import read_upload
from vlsm.app.ui import overlay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the README's screenshot is refreshed only on request (VLSM_SCREENSHOT=docs/img/app.png); otherwise a temp file
SCREENSHOT = os.environ.get("VLSM_SCREENSHOT") or os.path.join(tempfile.gettempdir(), "vlsm_app_screenshot.png")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]
PROMPTS = ["polyp", "small round polyp on the left"]


def skip(reason: str):
    print(f"\nSKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def need(module: str):
    try:
        return __import__(module)
    except ImportError:
        skip(f"{module} is not installed: the app's extra, pip install -r requirements-app.txt (make app)")


def find_chromium() -> str | None:
    """The system Chromium (VLSM_CHROMIUM, else the Debian/Ubuntu names on PATH)."""
    for c in (os.environ.get("VLSM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
              shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image_path(tiny_run) -> str:
    """A real Kvasir-SEG image from ../shared/data, else a synthetic test image of the run's data."""
    folder = os.path.join(SHARED_DATA, "kvasir_seg", "images")
    if os.path.isdir(folder) and os.listdir(folder):
        return os.path.join(folder, sorted(os.listdir(folder))[0])
    folder = os.path.join(tiny_run["data_root"], "synthetic", "images")
    return os.path.join(folder, sorted(f for f in os.listdir(folder) if f.startswith("test"))[0])


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """``python app.py --checkpoint <tiny run>`` on a free port of 127.0.0.1; its log is checked for
    tracebacks."""
    need("gradio")
    work = tmp_path_factory.mktemp("app_server")
    port = free_port()
    log_path = work / "server.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio"), "NO_PROXY": "127.0.0.1,localhost",
           "VLSM_DEBUG": ""}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", tiny_run["run_dir"],
                                 "--port", str(port), "--device", "cpu"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"app.py did not answer on {url} in 180 s:\n{log_path.read_text()}")
        time.sleep(0.5)
    yield {"url": url, "proc": proc, "log": log_path}
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def colour_count(img: np.ndarray, base: np.ndarray, colour) -> int:
    """Pixels of ``img`` in ``colour`` that are not that colour in the image underneath."""
    return int(((img == colour).all(-1) & ~(base == colour).all(-1)).sum())


def two_outline_threshold(tiny_run, image: str, prompts: list[str]):
    """A threshold (slider step 0.01) at which both prompts' outlines show on the image, with the overlay the
    page must then show: computed here with the run's model and the app's own drawing."""
    from vlsm.loading import load_trained
    rgb = read_upload(image).rgb
    probs = PromptExplorer(load_trained(tiny_run["run_dir"]).model).probabilities(rgb, prompts)
    best = None
    for t in sorted(set(np.round(np.quantile(np.stack(probs), np.linspace(0.02, 0.98, 49)), 2))):
        if not 0 < t < 1:
            continue
        expect = overlay(rgb, [p > t for p in probs])
        score = min(colour_count(expect, rgb, PALETTE[i]) for i in range(len(prompts)))
        if best is None or score > best[0]:
            best = (score, float(t), expect, rgb)
    assert best and best[0] > 0, "no threshold shows both outlines: the two prompts give the same mask"
    return best[1:]


# ----------------------------------------------------------------------------- the API


def test_segment_api_through_gradio_client(server, image_path, tmp_path):
    need("gradio_client")
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    client = Client(server["url"], verbose=False)
    height, width = np.asarray(Image.open(image_path)).shape[:2]
    masks, table = client.predict(handle_file(image_path), "\n".join(PROMPTS), 0.5, api_name="/segment")
    assert [m["caption"] for m in masks] == PROMPTS
    assert table["headers"][:4] == ["prompt", "colour", "area_px", "area_fraction"] and len(table["data"]) == 2
    for m, row in zip(masks, table["data"]):
        arr = np.asarray(Image.open(m["image"]))
        assert arr.shape == (height, width) and set(np.unique(arr)) <= {0, 255}  # one mask at the original size
        assert int((arr > 0).sum()) == row[2]

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    cases = [((handle_file(image_path), "", 0.5), "prompt box is empty"),
             ((handle_file(image_path), "polyp", 1.5), "threshold must be in [0, 1], got 1.5"),
             ((handle_file(str(bad)), "polyp", 0.5), "cannot read broken.png: cannot identify image file")]
    pytest.importorskip("nibabel")
    from nibabel.testing import data_path
    volume = os.path.join(str(data_path), "anatomical.nii")
    cases.append(((handle_file(volume), "brain", 0.5), "3-D volume with 25 axial slices: choose a slice"))
    for args, message in cases:  # an error status with one clear line each, and the app keeps serving
        with pytest.raises(AppError) as error:
            client.predict(*args, api_name="/segment")
        text = str(error.value)
        assert message in text and "\n" not in text and "Traceback" not in text, text
        assert str(server["log"].parent) not in text  # the upload's temporary folder is not shown, its name is
    masks, table = client.predict(handle_file(volume), "brain", 0.0, 12, "auto", api_name="/segment")
    assert np.asarray(Image.open(masks[0]["image"])).shape == (41, 33)  # an axial slice of the 33 x 41 x 25 volume
    row = dict(zip(table["headers"], table["data"][0]))
    assert float(row["area_mm2"]) == pytest.approx(4.0 * float(row["area_px"]))
    assert server["proc"].poll() is None and "Traceback" not in server["log"].read_text()


# ----------------------------------------------------------------------------- the page in Chromium


def test_the_page_in_a_real_browser(server, image_path, tiny_run):
    need("playwright")
    chromium = find_chromium()
    if not chromium:
        skip("no Chromium found (VLSM_CHROMIUM, /usr/bin/chromium, chromium, chromium-browser, google-chrome): "
             "apt-get install chromium, as .ci/run does")
    from playwright.sync_api import sync_playwright
    threshold, expect, rgb = two_outline_threshold(tiny_run, image_path, PROMPTS)
    outside = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
        try:
            page = browser.new_page()
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (server["url"], "data:", "blob:")) else None)
            page.goto(server["url"], wait_until="load")
            page.wait_for_selector("#segment", timeout=30_000)
            assert page.locator("#threshold input[type=number]").input_value() == "0.5"  # the run's threshold

            def status_has(text: str, timeout=30_000):
                page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text,
                                       timeout=timeout)

            page.locator("#upload input[type=file]").set_input_files(image_path)
            status_has("press Segment")
            page.locator("#prompts textarea").fill("\n".join(PROMPTS))
            page.locator("#segment").click()
            status_has("2 mask(s) in")
            assert page.locator("#legend li").count() == 2

            box = page.locator("#threshold input[type=number]")  # move the threshold: re-thresholded, no forward
            box.fill(f"{threshold:g}")
            box.press("Enter")
            status_has(f"threshold {threshold:g}: the cached probabilities re-thresholded (no forward pass)")
            legend = page.locator("#legend li")
            assert legend.count() == 2
            colours = [legend.nth(i).get_attribute("data-colour") for i in range(2)]
            assert colours == ["#%02x%02x%02x" % PALETTE[i] for i in range(2)]
            src = page.locator("#overlay img").get_attribute("src")
            shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
            assert shown.shape == rgb.shape  # drawn at the original size
            for i in range(2):  # two outlines, each in its own colour
                assert colour_count(shown, rgb, PALETTE[i]) > 0, f"no outline in colour {PALETTE[i]}"
            assert (shown != expect).any(-1).mean() < 1e-3  # the overlay computed here, pixel for pixel

            page.locator("#reliance").click()
            page.wait_for_function("() => document.querySelector('#verdict').innerText.includes('Dice')",
                                   timeout=30_000)
            text = page.locator("#reliance_table").inner_text()
            assert all(c in text for c in ("typed", "empty", "gibberish", "other image"))
            status_has("no new image encoding")
            page.locator("#reliance_gallery").scroll_into_view_if_needed()
            page.wait_for_function("() => { const im = [...document.querySelectorAll('#reliance_gallery img')];"
                                   " return im.length >= 8 && im.every(i => i.complete && i.naturalWidth > 0); }",
                                   timeout=30_000)  # 2 prompts x 4 conditions, loaded before the screenshot
            page.screenshot(path=SCREENSHOT, full_page=True)

            page.locator("#prompts textarea").fill("  \n")  # a mistake: a message in the page, nothing breaks
            page.locator("#segment").click()
            status_has("Error: the prompt box is empty")
            assert page.locator("#legend li").count() == 2  # the last masks stay
            page.locator("#prompts textarea").fill(PROMPTS[0])
            page.locator("#segment").click()
            status_has("0 image encoding(s), 0 text encoding(s), 0 decode(s)")  # cached: the app still serves
            page.wait_for_function("() => document.querySelectorAll('#legend li').length == 1", timeout=30_000)
        finally:
            browser.close()
    assert not outside, f"the page fetched from outside 127.0.0.1 (offline by design): {outside[:5]}"
    assert server["proc"].poll() is None and "Traceback" not in server["log"].read_text()
    assert os.path.getsize(SCREENSHOT) > 10_000
