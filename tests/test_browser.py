"""The book a reader gets, checked in a real browser (headless Chromium through selenium).

The book is built from the committed notebooks as stored (``scripts/build_book.py --params stored``:
nothing is executed), served on localhost and every HTML page is loaded in headless Chromium. The
checks: no console error, every image and internal link (with its #anchor) resolves, no execution
error or traceback, at least one figure on every notebook page, no absolute path of the build
machine in any page, and launch buttons (Binder, Colab, repository) that point at the repository
configured in ``_config.yml``. Screenshots of every page at desktop (1280 px) and phone (390 px)
width land in ``_build/screenshots/`` (not committed), with ``report.json`` listing what each page
showed.

``PXPERMUTE_BOOK_HTML=<folder>`` tests an already built book instead of building one (the
publishing workflow builds once, tests, then deploys the same files). Without Chromium, its
WebDriver or selenium the module is skipped with one line; with ``PXPERMUTE_REQUIRE_BROWSER=1``
(set by ``.ci/run``) that is a failure instead.
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import REPO

SCRIPT = REPO / "scripts" / "build_book.py"
SCREENSHOTS = REPO / "_build" / "screenshots"
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}
# absolute paths of a build machine (POSIX homes and temp folders, macOS, Windows)
MACHINE_PATH = re.compile(r"(?<![\w.~-])(/work/|/tmp/|/root/|/home/|/Users/|/private/var/|[A-Z]:\\\\Users\\\\)")
EXECUTION_ERRORS = ("Traceback (most recent call last)", "An Exception was encountered",
                    "Exception encountered at", "-" * 75)
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
                # the same result with or without a network: only the local server resolves
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]

pytestmark = pytest.mark.slow


def _unavailable(reason: str):
    msg = f"browser test skipped: {reason}"
    if os.environ.get("PXPERMUTE_REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(f"{msg} [PXPERMUTE_REQUIRE_BROWSER=1]", pytrace=False)
    pytest.skip(msg)


def _binaries() -> tuple[str, str]:
    chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        _unavailable("Chromium or chromedriver not found (Debian: apt-get install chromium chromium-driver)")
    return chrome, driver


def _repository() -> tuple[str, str, str]:
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    url = cfg["repository"]["url"].rstrip("/")
    m = re.match(r"https://github\.com/([^/]+)/([^/]+)$", url)
    assert m, f"_config.yml repository.url {url!r} is not a GitHub repository URL"
    return url, f"{m.group(1)}/{m.group(2)}", cfg["repository"].get("branch", "main")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def html_root(tmp_path_factory) -> Path:
    given = os.environ.get("PXPERMUTE_BOOK_HTML")
    if given:
        root = Path(given).resolve()
        assert (root / "index.html").exists(), f"PXPERMUTE_BOOK_HTML={given} holds no index.html"
        return root
    _binaries()  # skip before spending minutes on a build nobody can look at
    build = tmp_path_factory.mktemp("book")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--params", "stored", "--build-dir", str(build)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    root = build / "book" / "_build" / "html"
    assert (root / "index.html").exists(), proc.stdout[-4000:]
    return root


@pytest.fixture(scope="module")
def server(html_root):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html_root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    chrome, chromedriver = _binaries()
    profile = tempfile.mkdtemp(prefix="pxpermute-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}", "--window-size=1280,900"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    except Exception as err:  # a broken install: say so in one line
        shutil.rmtree(profile, ignore_errors=True)
        _unavailable(f"Chromium did not start ({type(err).__name__}: {str(err).strip().splitlines()[0]})")
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


_PAGE_JS = r"""
const out = {};
out.text = document.body ? document.body.innerText : "";
out.title = document.title;
out.images = Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
    w: i.naturalWidth, h: i.naturalHeight, shown_w: i.getBoundingClientRect().width,
    in_output: !!i.closest('.cell_output, .output')}));
out.svgs_in_output = document.querySelectorAll('.cell_output svg, .output svg').length;
out.links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
out.buttons = Array.from(document.querySelectorAll('.article-header-buttons a[href], a.btn-source-repository-button'))
    .map(a => a.href);
out.tracebacks = Array.from(document.querySelectorAll('.output.traceback, .output.error, .cell_output .traceback'))
    .map(e => e.innerText.slice(0, 300));
out.stderr = Array.from(document.querySelectorAll('.output.stderr')).map(e => e.innerText.slice(0, 300));
out.ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
    .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.name));
out.doc_width = document.documentElement.scrollWidth;
out.height = Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);
out.wide = Array.from(document.querySelectorAll('.cell_output img, .cell_output table, article img'))
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).length;
return out;
"""


def _pages(root: Path) -> list[str]:
    skip = {"_static", "_sources", "_images"}
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html") if not skip & set(p.relative_to(root).parts))


def _screenshot(drv, path: Path, width: int, height: int) -> None:
    """Full-page PNG at this CSS width (device metrics emulated, so phone widths are exact)."""
    import base64

    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    time.sleep(0.3)
    full = drv.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    shot = drv.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": min(int(full), 16000), "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def visited(html_root, server, driver) -> dict[str, dict]:
    """Every page loaded once per width; what the browser saw, by page."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    pages = {}
    for rel in _pages(html_root):
        url = server + rel
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        driver.get_log("browser")  # drop what earlier pages left
        driver.get(url)
        driver.execute_script("return document.fonts ? document.fonts.ready : null")
        # scroll through the page so lazily loaded images load, then back to the top
        height = driver.execute_script("return document.documentElement.scrollHeight")
        for y in range(0, int(height) + 900, 900):
            driver.execute_script(f"window.scrollTo(0, {y})")
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.2)
        info = driver.execute_script(_PAGE_JS)
        info["console"] = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        info["raw_html"] = (html_root / rel).read_text(errors="replace")
        shots = {}
        for name, (w, h) in WIDTHS.items():
            path = SCREENSHOTS / name / (rel.replace("/", "__").removesuffix(".html") + ".png")
            _screenshot(driver, path, w, h)
            if name == "phone":
                info["phone_doc_width"] = driver.execute_script("return document.documentElement.scrollWidth")
            shots[name] = str(path.relative_to(REPO))
        info["screenshots"] = shots
        pages[rel] = info
    report = {rel: {k: v for k, v in info.items() if k not in ("text", "raw_html", "ids", "links")}
              for rel, info in pages.items()}
    for rel, info in pages.items():  # what this offline run could not check
        report[rel]["external_images"] = [i["src"] for i in info["images"] if _external(i["src"], server)]
    (SCREENSHOTS / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return pages


def _notebook_pages(pages) -> list[str]:
    stems = {p.stem for p in (REPO / "notebooks").glob("*.ipynb")}
    return [rel for rel in pages if rel.startswith("notebooks/") and Path(rel).stem in stems]


def _problems_text(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_every_toc_page_was_built(html_root):
    from test_book import _toc_entries

    missing = [e for e in _toc_entries() if ((REPO / f"{e}.ipynb").exists() or (REPO / f"{e}.md").exists())
               and not (html_root / f"{e}.html").exists()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"


def _external(message_or_url: str, server: str) -> bool:
    """A resource from another site (badges, CDN scripts): not loaded in this offline test."""
    url = message_or_url.split(" ", 1)[0]
    return url.startswith(("http://", "https://")) and not url.startswith(server)


def test_no_console_errors(visited, server):
    problems = [f"{rel}: {e['message'][:300]}" for rel, info in visited.items() for e in info["console"]
                if not (_external(e["message"], server) and "net::ERR_NAME_NOT_RESOLVED" in e["message"])
                and not e["message"].startswith(server + "favicon.ico ")]  # the browser's own request; no icon set
    assert not problems, _problems_text(problems)


def test_every_image_loads(visited, server):
    problems = [f"{rel}: image {img['src']} did not load" for rel, info in visited.items()
                for img in info["images"] if not img["ok"] and not _external(img["src"], server)]
    assert not problems, _problems_text(problems)


def test_every_internal_link_resolves(visited, server):
    problems, status = [], {}
    for rel, info in visited.items():
        for href in info["links"]:
            if not href.startswith(server):
                continue
            target, _, fragment = href.partition("#")
            if target not in status:
                try:
                    with urllib.request.urlopen(target, timeout=10) as resp:
                        status[target] = resp.status
                except urllib.error.HTTPError as err:
                    status[target] = err.code
            if status[target] != 200:
                problems.append(f"{rel}: link {href[len(server):]} -> HTTP {status[target]}")
                continue
            if fragment:
                page = target[len(server):] or "index.html"
                page = page + "index.html" if page.endswith("/") else page
                ids = visited[page]["ids"] if page in visited else None
                if ids is not None and urllib.parse.unquote(fragment) not in ids:
                    problems.append(f"{rel}: link {href[len(server):]} -> no element with id {fragment!r}")
    assert not problems, _problems_text(sorted(set(problems)))


def test_no_execution_errors_or_tracebacks(visited):
    problems = []
    for rel, info in visited.items():
        for tb in info["tracebacks"]:
            problems.append(f"{rel}: error output: {tb[:200]!r}")
        for marker in EXECUTION_ERRORS:
            if marker in info["text"]:
                i = info["text"].index(marker)
                problems.append(f"{rel}: shows {info['text'][max(0, i - 80): i + 160]!r}")
    assert not problems, _problems_text(problems)


def test_every_notebook_page_shows_a_figure(visited):
    pages = _notebook_pages(visited)
    assert pages, "no notebook page was built"
    problems = []
    for rel in pages:
        info = visited[rel]
        figures = [i for i in info["images"] if i["in_output"] and i["ok"]]
        if not figures and not info["svgs_in_output"]:
            problems.append(f"{rel}: no figure among the cell outputs")
    assert not problems, _problems_text(problems)


def test_no_build_machine_paths(visited, html_root):
    problems = []
    build_paths = {str(REPO), str(html_root), str(Path(tempfile.gettempdir()).resolve()), str(Path.home())}
    for rel, info in visited.items():
        for m in MACHINE_PATH.finditer(info["text"]):
            problems.append(f"{rel}: page text shows {info['text'][max(0, m.start() - 60): m.end() + 80]!r}")
        for path in build_paths:
            if path and path != "/" and path in info["raw_html"]:
                i = info["raw_html"].index(path)
                problems.append(f"{rel}: HTML contains the build path {info['raw_html'][max(0, i - 60): i + 80]!r}")
    assert not problems, _problems_text(problems)


def test_launch_buttons_point_at_the_configured_repository(visited):
    url, slug, branch = _repository()
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    binder = cfg["launch_buttons"]["binderhub_url"].rstrip("/")
    colab = cfg["launch_buttons"]["colab_url"].rstrip("/")
    problems = []
    for rel in _notebook_pages(visited):
        links = visited[rel]["links"]
        nb = f"notebooks/{Path(rel).stem}.ipynb"
        if not any(h.startswith(f"{binder}/v2/gh/{slug}/{branch}") and h.endswith(nb) for h in links):
            problems.append(f"{rel}: no Binder button for {slug}@{branch} {nb}: "
                            f"{[h for h in links if 'mybinder' in h or binder in h]}")
        if f"{colab}/github/{slug}/blob/{branch}/{nb}" not in links:
            problems.append(f"{rel}: no Colab button for {slug}@{branch} {nb}: {[h for h in links if 'colab' in h]}")
    for rel, info in visited.items():
        github = {h.rstrip("/") for h in info["buttons"] if h.startswith("https://github.com/")}
        if github != {url}:
            problems.append(f"{rel}: the repository button should point at {url}; header buttons: {sorted(github)}")
        # install lines shown to readers (Colab cells, docs) name the same repository
        for m in re.finditer(r"git\+https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[@\s\"'#]|$)", info["text"]):
            if m.group(1) != slug:
                problems.append(f"{rel}: installs from {m.group(0)}, not the configured repository {slug}")
    assert not problems, _problems_text(problems)


def test_screenshots_at_desktop_and_phone_width(visited):
    from PIL import Image

    for rel, info in visited.items():
        for name, (w, _) in WIDTHS.items():
            path = REPO / info["screenshots"][name]
            with Image.open(path) as im:
                assert im.width == w, (rel, name, im.size)
                assert im.height >= 300, (rel, name, im.size)
    problems = [f"{rel}: page is {info['phone_doc_width']} px wide at phone width 390 px (sideways scrolling)"
                for rel, info in visited.items() if info["phone_doc_width"] > WIDTHS["phone"][0] + 1]
    assert not problems, _problems_text(problems)
