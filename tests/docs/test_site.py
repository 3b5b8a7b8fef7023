"""The built site, opened in headless Chromium as a learner would open it.

One build per run (``built_site``, warnings as errors), then every page
through chromedriver: it loads, its internal links and anchors lead
somewhere, its images and diagrams exist and load, and nothing makes the
page wider than the window, at a desktop and at a phone width (code
blocks, tables and diagrams must scroll or shrink inside their own box).
"""

from __future__ import annotations

import os
import re
import urllib.parse

import pytest

from tests.docs import webdriver

# What the page reports about itself: its width against the window's, the
# images that did not load, the diagrams (<object>) and links it points to,
# and, to say *what* is too wide, the elements sticking out of the window
# with no scrolling box around them.
PAGE_FACTS = """
const de = document.documentElement;
const clipped = e => { for (let p = e.parentElement; p; p = p.parentElement) {
    const o = getComputedStyle(p).overflowX; if (o !== 'visible') return true; } return false; };
const wide = [...document.querySelectorAll('body *')].filter(e => {
    const r = e.getBoundingClientRect(); return r.width > 0 && r.right > de.clientWidth + 1 && !clipped(e); });
return {
  title: document.title,
  ready: document.readyState,
  scrollWidth: de.scrollWidth, clientWidth: de.clientWidth,
  brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
  objects: [...document.querySelectorAll('object[data]')].map(o => o.data),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  wide: wide.slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)),
};
"""

WIDTHS = {"desktop": (1280, 900), "phone": (400, 800)}


def pages(html) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(html):
        for f in files:
            if f.endswith(".html"):
                out.append(os.path.relpath(os.path.join(dirpath, f), html))
    return sorted(out)


def ids_of(path: str, cache: dict) -> set[str]:
    if path not in cache:
        with open(path, encoding="utf-8") as f:
            cache[path] = set(re.findall(r'\bid="([^"]+)"', f.read()))
    return cache[path]


def check_page(browser, html: str, page: str, id_cache: dict) -> list[str]:
    """What is wrong with one page of the site rooted at ``html`` (nothing: [])."""
    problems = []
    browser.get("file://" + os.path.join(html, page))
    facts = browser.run(PAGE_FACTS)
    if facts["ready"] != "complete" or not facts["title"]:
        problems.append(f"{page}: did not load ({facts['ready']!r}, title {facts['title']!r})")
    if facts["scrollWidth"] > facts["clientWidth"]:
        problems.append(f"{page}: {facts['scrollWidth']} px wide in a {facts['clientWidth']} px window: "
                        f"{facts['wide']}")
    problems += [f"{page}: image did not load: {src}" for src in facts["brokenImages"]]
    for url in facts["objects"] + facts["links"]:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file":
            continue  # external links are not followed
        target = urllib.parse.unquote(parts.path)
        if not os.path.exists(target):
            problems.append(f"{page}: broken link {url}")
        elif parts.fragment and target.endswith(".html") and parts.fragment not in ids_of(target, id_cache):
            problems.append(f"{page}: no anchor #{parts.fragment} in {os.path.relpath(target, html)}")
    return problems


@pytest.fixture(scope="module")
def browser():
    reason = webdriver.available()
    if reason:
        pytest.skip(reason)
    with webdriver.Browser(*WIDTHS["desktop"]) as b:
        yield b


@pytest.mark.slow
@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_every_page_loads_links_resolve_and_nothing_is_wider_than_the_page(built_site, browser, width):
    html = str(built_site)
    browser.resize(*WIDTHS[width])
    problems: list[str] = []
    id_cache: dict = {}
    all_pages = pages(html)
    # The generated source listings (viewcode's _modules/) are checked at the
    # desktop width only: they are 40% of the pages and all alike.
    checked = [p for p in all_pages if width == "desktop" or not p.startswith("_modules/")]
    assert "index.html" in checked and "tutorial/index.html" in checked
    for page in checked:
        problems += check_page(browser, html, page, id_cache)
    assert problems == [], "\n".join(problems[:40])


@pytest.mark.slow
def test_the_diagrams_are_drawn(built_site):
    """The state machine, topology, layers and packet path come out as SVG figures."""
    html = str(built_site)
    for page, count in (("tcp-states.html", 1), ("architecture.html", 2), ("tutorial/index.html", 1)):
        with open(os.path.join(html, page), encoding="utf-8") as f:
            text = f.read()
        svgs = re.findall(r'<object data="([^"]+\.svg)"', text)
        assert len(svgs) >= count, page
        for svg in svgs:
            with open(os.path.normpath(os.path.join(html, os.path.dirname(page), svg)), encoding="utf-8") as f:
                assert "<svg" in f.read()
    with open(os.path.join(html, "tcp-states.html"), encoding="utf-8") as f:
        svg_name = re.search(r'<object data="([^"]+\.svg)"', f.read()).group(1)
    with open(os.path.join(html, svg_name), encoding="utf-8") as f:
        svg = f.read()
    from ipvs.proto import tcp

    for name in tcp.STATE_NAMES:
        assert f">{name}<" in svg, name


def test_the_checks_catch_what_they_look_for(tmp_path, browser):
    """A page too wide, with a missing image, a dead link and a dead anchor: four problems."""
    browser.resize(*WIDTHS["desktop"])
    (tmp_path / "ok.html").write_text('<html><head><title>ok</title></head><body><p id="here">x</p></body></html>')
    (tmp_path / "bad.html").write_text(
        '<html><head><title>bad</title></head><body>'
        '<div style="width: 3000px">wide</div><img src="missing.png">'
        '<a href="nowhere.html">a</a><a href="ok.html#gone">b</a><a href="ok.html#here">c</a>'
        '<div style="overflow-x: auto"><pre style="width: 3000px">scrolls in its own box</pre></div>'
        '</body></html>')
    problems = check_page(browser, str(tmp_path), "bad.html", {})
    assert len(problems) == 4, problems
    assert "3000" in problems[0] or "wide" in problems[0]
    assert check_page(browser, str(tmp_path), "ok.html", {}) == []
