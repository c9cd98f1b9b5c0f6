"""The docs site: `mkdocs build --strict` (every internal link and anchor resolves, every page is in the nav, the
API pages render from the docstrings), then every built page in headless Chromium, as the HTML reports are
checked: no console error, every local link and image resolves, a screenshot of each page. The pages are served
over http on loopback, as a docs host serves them (search and directory URLs need it).

Needs the `docs` extra (mkdocs, mkdocs-material, mkdocstrings[python]; part of `dev`, which scripts/test.sh
installs) and Debian's `chromium` for the browser half; without either, the part that needs it is skipped with a
message saying so. Screenshots are saved under the test's tmp directory (and, with WAM_SCREENSHOTS=DIR, in DIR).
"""

import functools
import os
import shutil
import subprocess
import sys
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from browser import Chromium, find_chromium

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = find_chromium()


def _mkdocs() -> list[str] | None:
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "mkdocs"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    cmd = _mkdocs()
    if cmd is None:
        msg = (
            "MKDOCS IS NOT INSTALLED: the docs site was NOT built. pip install -e '.[docs]' (part of the dev "
            "extra that scripts/test.sh installs)"
        )
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [*cmd, "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


def test_site_builds_strictly_with_every_page(site):
    nav_pages = sorted(
        ("index.html" if p.stem == "index" else f"{p.stem}/index.html")
        if p.parent == ROOT / "docs"
        else p.relative_to(ROOT / "docs").parent.as_posix()
        + "/"
        + ("index.html" if p.stem == "index" else f"{p.stem}/index.html")
        for p in (ROOT / "docs").rglob("*.md")
    )
    built = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert set(nav_pages) <= built, f"pages not built: {sorted(set(nav_pages) - built)}"
    api = (site / "api" / "index.html").read_text()
    assert "WAMPolicy" in api and "InferenceConfig" in api, "the API reference did not render from the docstrings"
    design = (site / "design" / "index.html").read_text()
    assert "Dependencies point downward" in design


def test_results_pages_keep_their_commands_and_seed_sets():
    """Every results page with closed-loop numbers says which seed set they come from; every study's numbers
    carry a command."""
    for page in sorted((ROOT / "docs" / "results").glob("*.md")):
        text = page.read_text()
        if page.name == "index.md":
            continue
        assert "```" in text or "`python " in text or "python benchmarks" in text, f"{page.name}: no command"
        if "success" in text and "MT" in text and page.stem not in ("synthetic", "training-speed", "data"):
            assert "development" in text and "seed 0" in text, f"{page.name}: no seed-set statement"


def served_file(site: Path, base: str, url: str) -> Path | None:
    """The file of `site` that a link into the served site names (None: a link elsewhere)."""
    if not url.startswith(base):
        return None
    path = unquote(urlparse(url).path).lstrip("/")
    f = site / path
    return f / "index.html" if url.split("#")[0].endswith("/") or f.is_dir() else f


@pytest.fixture(scope="module")
def served(site):
    """The built site on a loopback http server: its base URL."""
    handler = functools.partial(
        type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}), directory=str(site)
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        msg = (
            "CHROMIUM IS NOT INSTALLED: the docs pages were NOT tested in a browser. Run scripts/test.sh "
            "(it installs Debian's chromium) or apt-get install chromium"
        )
        warnings.warn(msg, stacklevel=2)
        pytest.skip(msg)
    with Chromium(CHROMIUM) as b:
        yield b


def test_every_docs_page_loads_cleanly_in_chromium(site, served, browser, tmp_path):
    shots = tmp_path / "screenshots"
    pages = sorted(site.rglob("*.html"))
    pages = [p for p in pages if p.name != "404.html"]  # (a 404 page's links are relative to wherever it shows)
    problems = []
    for i, path in enumerate(pages):
        rel = path.relative_to(site).as_posix()
        page = browser.open(served + rel, screenshot=shots / f"{i:02d}-{rel.replace('/', '-')}.png")
        problems += [f"{rel}: {e}" for e in page.errors]
        for m in page.media:
            if not m["ok"]:
                problems.append(f"{rel}: {m['tag']} {m['src']} does not load: {m['why']}")
        for link in page.links:
            f = served_file(site, served, link)
            if f is not None and not f.is_file():
                problems.append(f"{rel}: link to a page or file that was not built: {link}")
    assert len(pages) >= 25, f"only {len(pages)} pages built"
    assert sorted(shots.glob("*.png")), "no screenshot was taken"
    if os.environ.get("WAM_SCREENSHOTS"):
        dest = Path(os.environ["WAM_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        for s in shots.glob("*.png"):
            shutil.copy(s, dest / s.name)
    assert not problems, "\n".join(problems)
