#!/usr/bin/env python3
"""The page at / in a real browser: headless Chromium (Debian's chromium + chromium-driver) through Selenium.

It starts `diffuse serve` on a pixel RGB model (default: a pipeline folder assembled from
Tests/Fixtures/guidance), opens the page, turns colour guidance on with a colour and a scale, sets
the steps, starts a job, waits until the x_t preview has changed at least three times, takes a
screenshot mid-sampling, and waits for the final image and its download link. Exits non-zero on
any failure.

    apt-get install chromium chromium-driver && pip install selenium
    python3 Scripts/serve-browser-test.py [--diffuse .build/debug/diffuse] [--model DIR] [--screenshot page.png]
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixture_pipeline(folder):
    """A DDPMPipeline folder from the guidance fixture's 8×8 RGB UNet and DDIM scheduler."""
    source = os.path.join(ROOT, "Tests", "Fixtures", "guidance")
    shutil.copytree(os.path.join(source, "unet"), os.path.join(folder, "unet"))
    os.makedirs(os.path.join(folder, "scheduler"))
    shutil.copy(os.path.join(source, "scheduler_config.json"), os.path.join(folder, "scheduler", "scheduler_config.json"))
    with open(os.path.join(folder, "model_index.json"), "w") as index:
        json.dump({"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"]}, index)
    return folder


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--diffuse", default=os.path.join(ROOT, ".build", "debug", "diffuse"))
    parser.add_argument("--model", help="a pixel RGB pipeline folder (default: from Tests/Fixtures/guidance)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--screenshot", help="where to save a screenshot taken mid-sampling")
    parser.add_argument("--guide-scale", default="60")
    arguments = parser.parse_args()

    work = tempfile.mkdtemp(prefix="diffuse-browser-")
    model = arguments.model or fixture_pipeline(os.path.join(work, "guided-rgb"))
    port = free_port()
    server = subprocess.Popen([arguments.diffuse, "serve", model, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    browser = None
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        options = webdriver.ChromeOptions()
        for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"]:
            options.add_argument(flag)
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
        browser.get(base + "/")
        deadline = time.time() + 30
        while not browser.find_elements(By.CSS_SELECTOR, "#model option") and time.time() < deadline:
            time.sleep(0.1)
        assert browser.find_elements(By.CSS_SELECTOR, "#model option"), "the page lists no model"

        # Colour guidance: colour and scale (set as a person's input would, then the input event).
        browser.find_element(By.ID, "useColour").click()
        browser.execute_script("""
            const set = (id, value) => { const e = document.getElementById(id); e.value = value;
                                         e.dispatchEvent(new Event('input', {bubbles: true})); };
            set('colour', '#e0301e'); set('guideScale', arguments[0]);""", arguments.guide_scale)
        steps = browser.find_element(By.ID, "steps")
        steps.clear()
        steps.send_keys(str(arguments.steps))
        count = browser.find_element(By.ID, "count")
        count.clear()
        count.send_keys("4")
        # Every x_t preview the page shows, recorded by the page itself as it sets the image (polling
        # the image from here missed previews of a job that ends in 0.6 s: CI saw 2 of them once).
        browser.execute_script("""
            window.previewSources = [];
            const image = document.getElementById('previewSample');
            new MutationObserver(() => {
                const source = image.getAttribute('src') || '';
                const seen = window.previewSources;
                if (source.startsWith('data:image/png;base64,') && seen[seen.length - 1] !== source) seen.push(source);
            }).observe(image, {attributes: true, attributeFilter: ['src']});""")
        browser.find_element(By.ID, "start").click()

        previews, screenshot_taken = [], False
        deadline = time.time() + 120
        while time.time() < deadline:
            previews = browser.execute_script("return window.previewSources")
            halfway = browser.execute_script("const p = document.getElementById('progress'); return p.value >= p.max / 2;")
            if len(previews) >= 3 and halfway and arguments.screenshot and not screenshot_taken:
                browser.save_screenshot(arguments.screenshot)
                screenshot_taken = True
            if browser.execute_script("return document.body.dataset.done || ''"):
                break
            time.sleep(0.02)
        previews = browser.execute_script("return window.previewSources")
        status = browser.find_element(By.ID, "status").text
        error = browser.find_element(By.ID, "error").text
        if arguments.screenshot and not screenshot_taken:
            browser.save_screenshot(arguments.screenshot)
        assert not error, f"the page shows an error: {error}"
        assert len(set(previews)) >= 3, f"the x_t preview changed {len(set(previews))} times (status: {status})"
        assert browser.execute_script("return document.body.dataset.done || ''"), f"no final image (status: {status})"
        results = browser.find_elements(By.CSS_SELECTOR, "#result img")
        links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#result a[download]")]
        gallery = browser.find_elements(By.CSS_SELECTOR, "#gallery img")
        assert len(results) == 4 and len(links) == 4 and len(gallery) == 4, (len(results), len(links), len(gallery))
        png = urllib.request.urlopen(links[0], timeout=10).read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"tEXtparameters" in png and b"color=#e0301e" in png, "the download carries its parameters"
        print(f"browser: {len(set(previews))} distinct x_t previews seen, status '{status}', 4 results, 4 in the gallery, "
              f"download {len(png)} bytes with its parameters" + (f", screenshot {arguments.screenshot}" if screenshot_taken else ""))
    finally:
        if browser:
            browser.quit()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
