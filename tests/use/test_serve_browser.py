"""The web page in headless Chromium: choose an image of a known class, see that class on the page.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) and the
``selenium`` package, which drives the system's browser through the system's driver (never a downloaded
one). Skipped when any of them is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from visiontrain.data.synthetic import SHAPES, make_shapes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no chromium/chromedriver here (apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
pytest.importorskip("fastapi")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from visiontrain.use.serve import build_app, running_server  # noqa: E402

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--disable-extensions"]


@pytest.fixture(scope="module")
def page_url(synthetic_run):
    with running_server(build_app(synthetic_run.dir)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [*ARGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _shape_files(folder: Path, seed: int) -> list[tuple[Path, str]]:
    """One image of each class (make_shapes balances its labels), saved as PNG files."""
    images, labels = make_shapes(len(SHAPES), 32, 3, seed=seed)
    out = []
    for i, (image, label) in enumerate(zip(images, labels.tolist(), strict=True)):
        out.append((folder / f"shape-{i}.png", SHAPES[label]))
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(out[-1][0])
    return out


def _text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def test_choosing_an_image_shows_its_class_with_bars(page_url: str, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 30)
    browser.get(page_url + "/")
    wait.until(lambda d: "4 classes" in _text(d, "model"))
    seen = set()
    for path, truth in _shape_files(tmp_path, seed=11):  # every class in turn: the page must follow
        browser.find_element(By.ID, "file").send_keys(str(path))
        wait.until(lambda d, name=path.name: _text(d, "status") == name
                   and not d.execute_script("return document.getElementById('result').hidden"))
        assert browser.find_element(By.ID, "top-label").text == truth
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .label")]
        assert labels[0] == truth and sorted(labels) == sorted(SHAPES)
        widths = wait.until(lambda d: d.execute_script(
            "const w = [...document.querySelectorAll('#bars .bar')].map(b => parseFloat(b.style.width));"
            "return w.every(x => x >= 0) ? w : null"))
        assert widths == sorted(widths, reverse=True) and widths[0] > 25
        seen.add(truth)
    assert seen == set(SHAPES)


def test_with_a_token_the_page_asks_for_it_then_classifies(synthetic_run, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 30)
    with running_server(build_app(synthetic_run.dir, token="page-token-123")) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
        assert "needs a token" in _text(browser, "model")
        browser.find_element(By.ID, "token").send_keys("page-token-123")
        browser.find_element(By.CSS_SELECTOR, "#auth button").click()
        wait.until(lambda d: "4 classes" in _text(d, "model"))
        path, truth = _shape_files(tmp_path, seed=12)[0]
        browser.find_element(By.ID, "file").send_keys(str(path))  # the page's POST carries the token, same origin
        wait.until(lambda d: _text(d, "status") == path.name)
        assert browser.find_element(By.ID, "top-label").text == truth
        browser.execute_script("sessionStorage.clear()")


def test_a_file_that_is_not_an_image_shows_the_error(page_url: str, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 30)
    browser.get(page_url + "/")
    note = tmp_path / "note.png"
    note.write_text("just text")
    browser.find_element(By.ID, "file").send_keys(str(note))
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("class") == "error")
    assert "looks like a text file" in _text(browser, "status")
    assert not browser.find_element(By.ID, "result").is_displayed()


def test_the_api_docs_page_renders_offline(page_url: str, browser) -> None:
    """Swagger UI's files come from the server itself (no CDN: this machine has no internet): /docs lists the
    endpoints."""
    browser.get(page_url + "/docs")
    wait = WebDriverWait(browser, 30)
    paths = wait.until(lambda d: d.execute_script(
        "const p = [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent.trim());"
        "return p.length ? p : null"))
    assert {"/predict", "/health", "/model"} <= set(paths)


def test_a_multilabel_model_shows_every_label_over_its_threshold_with_the_threshold_marked(
        multilabel_run, browser) -> None:
    import visiontrain

    image = sorted((multilabel_run.dir / "samples").iterdir())[0]
    expected = visiontrain.predict(multilabel_run.dir, [image])[0]["predictions"]
    wait = WebDriverWait(browser, 30)
    with running_server(build_app(multilabel_run.dir)) as url:
        browser.get(url + "/")
        wait.until(lambda d: "6 classes" in _text(d, "model"))
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda d: not d.execute_script("return document.getElementById('result').hidden"))
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#bars .label")]
    assert labels == [p["label"] for p in expected]
    assert browser.find_element(By.ID, "top-label").text == (", ".join(labels) or "no label over its threshold")
    ticks = browser.execute_script("return [...document.querySelectorAll('#bars .tick')].map(t => t.style.left)")
    assert [float(t.rstrip("%")) for t in ticks] == pytest.approx([100 * p["threshold"] for p in expected], abs=0.01)


def test_the_why_toggle_shows_the_grad_cam_overlay(page_url: str, browser, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 30)
    browser.get(page_url + "/")
    wait.until(lambda d: d.find_element(By.ID, "why-toggle").is_displayed())  # a served run can explain
    (first, _), (path, truth) = _shape_files(tmp_path, seed=13)[:2]  # two files: re-choosing one fires no change
    browser.find_element(By.ID, "file").send_keys(str(first))
    wait.until(lambda d: _text(d, "status") == first.name)
    assert not browser.find_element(By.ID, "why").is_displayed()  # off: no overlay asked for
    browser.find_element(By.ID, "explain").click()
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait.until(lambda d: _text(d, "status") == path.name and d.find_element(By.ID, "why").is_displayed())
    size = wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('why'); return i.complete && i.naturalWidth ? "
        "[i.naturalWidth, i.naturalHeight, i.src.slice(0, 22)] : null"))
    assert size[0] > 200 and size[1] > 100 and size[2] == "data:image/png;base64,"  # the decoded PNG drew
    assert browser.find_element(By.ID, "top-label").text == truth
