"""The review page (`--report` -> OUT/index.html): its cards, flags and pictures, checked in a real headless
Chromium loading the page from file:// (tests/browser.py), and rewritten by a daemon.

Waits use generous time-outs as liveness guards only; nothing here passes or fails on speed.
"""

from __future__ import annotations

import json
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.cli import main
from edge_runtime.outputs.cards import FLAGS, flags_of
from edge_runtime.outputs.layout import plain_path, thumbnail_path
from edge_runtime.outputs.page import ReviewPage, RunInfo, page_name
from edge_runtime.outputs.review import THUMB_SIZE
from tests.browser import Browser, chromium_path, dump_dom
from tests.helpers import nodule_scan, write_png

needs_chromium = pytest.mark.skipif(
    chromium_path() is None, reason="chromium is not installed (Debian: apt-get install chromium; .ci/run does)"
)
#: a file name the page must show as text: markup, an entity, both quotes, non-ASCII, a URL's '#' and '%'
WEIRD = "<img src=x onerror=alert(1)> & \"q\" 'é' #1 100%.png"
BAD_REASON_PART = "truncated PNG"  # what the reader says of bad.png (the test checks the error file says it)


def tissue(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    """Bright speckle and nothing dark: the tiny model finds no nodule."""
    return np.clip(np.random.default_rng(seed).normal(170, 18, (h, w)), 0, 255).astype(np.uint8)


def make_scans(src: Path) -> dict[str, set[str]]:
    """The scans of the run, with the flags each must get."""
    write_png(src / "a.png", nodule_scan(240, 320, (160, 120), (50, 35), seed=1)[0])
    write_png(src / "sub dir" / "b.png", nodule_scan(260, 300, (140, 130), (45, 40), seed=2)[0])
    write_png(src / WEIRD, nodule_scan(240, 320, (150, 110), (55, 40), seed=3)[0])
    write_png(src / "empty.png", tissue(seed=4))
    two = tissue(seed=5)
    cv2.ellipse(two, (80, 120), (40, 30), 0, 0, 360, 20, cv2.FILLED)
    # the tiny model cannot see one under 0.5 % ("small": above); wider than tall, not a taller-than-wide candidate
    cv2.ellipse(two, (250, 60), (26, 20), 0, 0, 360, 20, cv2.FILLED)
    write_png(src / "two.png", two)
    big = tissue(seed=6)
    cv2.ellipse(big, (160, 120), (140, 100), 0, 0, 360, 20, cv2.FILLED)  # over a quarter of the scan
    write_png(src / "big.png", big)
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    return {
        "a.png": set(),
        "sub dir/b.png": set(),
        WEIRD: set(),
        "empty.png": {"no-nodule"},
        "two.png": {"several"},
        "big.png": {"large"},
        "bad.png": {"failed"},
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model) -> tuple[Path, Path, dict[str, set[str]]]:
    root = tmp_path_factory.mktemp("review")
    src, out = root / "in", root / "out"
    expected = make_scans(src)
    assert main([str(src), "--out", str(out), "--model", str(tiny_model), "--report"]) == 1  # bad.png fails
    return src, out, expected


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run does)")
    with Browser() as b:
        yield b


def wait_js(browser: Browser, expression: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = browser.js(expression)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {expression}")


class Articles(HTMLParser):
    """The cards of a serialised DOM: (data-scan, hidden)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "article":
            names = dict(attrs)
            self.found.append((names["data-scan"] or "", "hidden" in names))


VISIBLE = "[...document.querySelectorAll('#cards .card')].filter(c => !c.hidden).map(c => c.dataset.scan)"


# -- files and rules, no browser -----------------------------------------------------------------------
def test_report_writes_the_page_thumbnails_and_plain_views_beside_the_overlays(run_dir):
    _, out, expected = run_dir
    assert (out / "index.html").is_file()
    for rel in expected:
        if rel == "bad.png":
            continue
        overlay = out / "overlays" / (rel.rsplit(".", 1)[0] + ".png")
        assert overlay.is_file(), "--report implies --overlay"
        thumb = cv2.imread(str(thumbnail_path(out, rel)))
        plain = cv2.imread(str(plain_path(out, rel)))
        full = cv2.imread(str(overlay))
        assert max(thumb.shape[:2]) <= THUMB_SIZE < max(full.shape[:2])
        assert plain.shape == full.shape
        assert thumbnail_path(out, rel).stat().st_size < overlay.stat().st_size / 3
    from edge_runtime.job.ledger import read_records

    done = {rel: r for rel, r in read_records(out).items() if r["event"] == "done"}
    assert "overlays/a.thumb.jpg" in done["a.png"]["outputs"]  # named in the ledger: a crash redoes them


def report(areas_by_frame, mean=0.9, presence=None, presence_threshold=None, width=100, height=100) -> dict:
    frames = [
        {
            "frame": i + 1,
            "presence": presence,
            "results": [
                {"threshold": 0.5, "nodules": [{"area_px": a, "mean_probability": mean} for a in areas]},
                {"threshold": 0.9, "nodules": []},
            ],
        }
        for i, areas in enumerate(areas_by_frame)
    ]
    return {
        "thresholds": [0.5, 0.9],
        "scan": {"width": width, "height": height},
        "model": {"presence_threshold": presence_threshold},
        "frames": frames,
    }


def test_flag_rules_at_the_lowest_threshold():
    assert flags_of(report([[1000]])) == []
    assert flags_of(report([[]])) == ["no-nodule"]
    assert flags_of(report([[1000]], mean=0.69)) == ["low-confidence"]
    assert flags_of(report([[1000]], presence=0.6, presence_threshold=0.4)) == ["low-confidence"]
    assert flags_of(report([[1000]], presence=0.7, presence_threshold=0.4)) == []  # 1.25 log-odds above
    assert flags_of(report([[]], presence=0.05, presence_threshold=0.1)) == ["low-confidence", "no-nodule"]
    assert flags_of(report([[]], presence=0.001, presence_threshold=0.1)) == ["no-nodule"]  # clearly none
    assert flags_of(report([[1000, 600]])) == ["several"]
    assert flags_of(report([[1000], [600]])) == []  # one component in each of two frames
    assert flags_of(report([[49]])) == ["small"]  # under 0.5 % of 10,000 px
    assert flags_of(report([[2501]])) == ["large"]  # over a quarter
    assert next(iter(FLAGS)) == "failed"


def with_calipers(report_: dict, **fields) -> dict:
    for frame in report_["frames"]:
        for r in frame["results"]:
            for n in r["nodules"]:
                n.update(fields)
    return report_


def test_size_flags_use_the_long_axis_in_mm_where_known_and_taller_than_wide():
    # 49 px of 10,000 is "small" by area, but a 6 mm long axis is not; 2,501 px is "large", 30 mm is not
    assert flags_of(with_calipers(report([[49]]), long_axis_mm=6.0)) == []
    assert flags_of(with_calipers(report([[1000]]), long_axis_mm=4.9)) == ["small"]
    assert flags_of(with_calipers(report([[2501]]), long_axis_mm=30.0)) == []
    assert flags_of(with_calipers(report([[1000]]), long_axis_mm=41.0)) == ["large"]
    assert flags_of(with_calipers(report([[49]]), long_axis_mm=None)) == ["small"]  # no spacing: the area share
    assert flags_of(with_calipers(report([[1000]]), taller_than_wide_candidate=True)) == ["taller-than-wide"]
    assert FLAGS["taller-than-wide"] == "taller-than-wide candidate"


def test_cards_show_long_by_short_axis_per_nodule(run_dir):
    import html as html_lib

    _, out, _ = run_dir
    page = (out / "index.html").read_text()
    nodule = json.loads((out / "reports" / "a.json").read_text())["frames"][0]["results"][0]["nodules"][0]
    card = page[page.index('data-scan="a.png"') :]
    card = html_lib.unescape(card[: card.index("</article>")])
    assert f'#1: <b class="calipers">{nodule["long_axis_px"]:.0f} × {nodule["short_axis_px"]:.0f} px</b>, 3,' in card
    assert "taller than wide" not in card  # 100 x 70 px: wider


def test_the_page_is_built_from_disk_so_a_rerun_shows_the_whole_run(run_dir, tiny_model, tmp_path):
    src, out, expected = run_dir
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count('class="card') == len(expected)
    # a second run that only adds a scan still shows every scan, and counts this run's own work
    src2, out2 = tmp_path / "in", tmp_path / "out"
    shutil.copytree(src, src2)
    shutil.copytree(out, out2)
    write_png(src2 / "new.png", nodule_scan(240, 320, (170, 120), (40, 30), seed=9)[0])
    main([str(src2), "--out", str(out2), "--model", str(tiny_model), "--report"])
    html = (out2 / "index.html").read_text(encoding="utf-8")
    assert html.count('class="card') == len(expected) + 1
    assert 'data-scan="new.png"' in html and 'data-scan="a.png"' in html
    assert "1 segmented" in html and f"{len(expected) - 1} up to date" in html


def test_pages_of_a_few_hundred_cards_and_no_page_left_from_a_larger_run(run_dir, tmp_path):
    _, out, expected = run_dir
    info = RunInfo(command=["edge-seg"], started=time.time(), finished=time.time())
    written = ReviewPage(out, page_size=3).write(info)
    assert [p.name for p in written[:3]] == ["index.html", "index-2.html", "index-3.html"]
    cards = [p.read_text(encoding="utf-8").count('class="card') for p in written[:3]]
    assert cards == [3, 3, len(expected) - 6]
    first = written[0].read_text(encoding="utf-8")
    assert 'data-scan="bad.png"' in first  # failed scans first
    # more than one page: each flag has pages of its own, and its button leads there
    flag_pages = ["index-failed.html", "index-no-nodule.html", "index-several.html", "index-large.html"]
    assert [p.name for p in written[3:]] == flag_pages
    assert 'href="index-no-nodule.html" data-flag="no-nodule"' in first
    flagged = (out / "index-no-nodule.html").read_text(encoding="utf-8")
    assert flagged.count('class="card') == 1 and 'data-scan="empty.png"' in flagged
    assert '<body data-flag="no-nodule">' in flagged
    assert page_name(2, "failed") == "index-failed-2.html"
    ReviewPage(out).write(info)
    assert sorted(p.name for p in out.glob("index*.html")) == ["index.html"]  # none left from the larger run


def test_the_page_fetches_nothing_from_elsewhere(run_dir):
    html = (run_dir[1] / "index.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and 'src="//' not in html and 'href="//' not in html


# -- in Chromium ---------------------------------------------------------------------------------------
@needs_chromium
def test_chromium_shows_one_card_per_scan_with_its_flags(run_dir, browser):
    _, out, expected = run_dir
    browser.open((out / "index.html").as_uri())
    cards = browser.js("[...document.querySelectorAll('#cards .card')].map(c => [c.dataset.scan, c.dataset.flags])")
    assert sorted(rel for rel, _ in cards) == sorted(expected)
    got = {rel: set(flags.split()) for rel, flags in cards}
    assert got == expected
    order = [rel for rel, _ in cards]
    assert order[0] == "bad.png" and set(order[-3:]) == {"a.png", "sub dir/b.png", WEIRD}  # flagged first
    counts = browser.js(
        "Object.fromEntries([...document.querySelectorAll('nav.flags a')].map(a => "
        "[a.dataset.flag, a.querySelector('b').textContent]))"
    )
    assert counts["all"] == str(len(expected)) and counts["failed"] == "1" and counts["no-nodule"] == "1"


@needs_chromium
def test_chromium_shows_a_failed_scan_with_its_reason(run_dir, browser):
    _, out, _ = run_dir
    browser.open((out / "index.html").as_uri())
    reason = next(
        line.split(": ", 1)[1]
        for line in (out / "bad.png.error.txt").read_text().splitlines()
        if line.startswith("reason: ")
    )
    assert BAD_REASON_PART in reason
    shown = browser.js(
        "[...document.querySelectorAll('.card')].find(c => c.dataset.scan === 'bad.png')"
        ".querySelector('.reason').textContent"
    )
    assert shown == reason


@needs_chromium
def test_chromium_shows_names_with_markup_quotes_and_non_ascii_as_text(run_dir, browser):
    _, out, _ = run_dir
    browser.open((out / "index.html").as_uri())
    card = f"[...document.querySelectorAll('.card')].find(c => c.dataset.scan === {json.dumps(WEIRD)})"
    assert browser.js(f"{card}.querySelector('h2').textContent") == WEIRD
    assert browser.js("document.querySelectorAll('img[src=\"x\"]').length") == 0  # no element made of the name
    assert browser.dialogs == []  # and no script
    # its thumbnail, named after it, is found (the URL is escaped: '#', '%', spaces)
    loaded = f"(() => {{ const img = {card}.querySelector('img'); img.scrollIntoView(); return img.naturalWidth; }})()"
    assert wait_js(browser, loaded) == 240


@needs_chromium
def test_chromium_filter_by_flag_after_a_click(run_dir, browser):
    _, out, expected = run_dir
    browser.open((out / "index.html").as_uri())
    assert sorted(browser.js(VISIBLE)) == sorted(expected)
    # wait for the card the click should leave, not for "one card": the previous filter also shows one
    browser.click('nav.flags a[data-flag="failed"]')
    assert wait_js(browser, f"{VISIBLE}.join('|') === 'bad.png'")
    assert browser.js("document.querySelector('a[data-flag=\"failed\"]').getAttribute('aria-pressed')") == "true"
    browser.click('nav.flags a[data-flag="several"]')
    assert wait_js(browser, f"{VISIBLE}.join('|') === 'two.png'")
    assert browser.js(VISIBLE) == ["two.png"]
    browser.click('nav.flags a[data-flag="all"]')
    assert wait_js(browser, f"{VISIBLE}.length === {len(expected)}")


@needs_chromium
def test_dump_dom_of_a_flag_url_is_filtered(run_dir):
    _, out, expected = run_dir
    dom = dump_dom((out / "index.html").as_uri() + "#no-nodule")
    cards = Articles()
    cards.feed(dom)
    assert len(cards.found) == len(expected)
    assert [rel for rel, hidden in cards.found if not hidden] == ["empty.png"]


@needs_chromium
def test_chromium_click_on_a_thumbnail_shows_the_overlay_beside_the_scan(run_dir, browser, tmp_path):
    _, out, _ = run_dir
    browser.open((out / "index.html").as_uri())
    card = "[...document.querySelectorAll('.card')].find(c => c.dataset.scan === 'a.png')"
    browser.click(".card[data-scan='a.png'] a.zoom")
    wait_js(browser, "!document.getElementById('viewer').hidden")
    sizes = wait_js(
        browser,
        "(() => { const o = document.getElementById('v-overlay'), p = document.getElementById('v-plain');"
        " return o.naturalWidth && p.naturalWidth && [o.naturalWidth, o.naturalHeight, p.naturalWidth, "
        "p.naturalHeight, o.src, p.src]; })()",
    )
    assert sizes[:4] == [320, 240, 320, 240]  # full size, not the thumbnail
    assert sizes[4].endswith("/overlays/a.png") and sizes[5].endswith("/overlays/a.plain.jpg")
    assert browser.js(f"{card} !== undefined")
    shot = browser.screenshot(tmp_path / "viewer.png")
    assert cv2.imread(str(shot)).std() > 10  # a picture, not a blank page
    # everything the page loaded came from disk
    urls = browser.requested()
    assert any(u.endswith("/overlays/a.plain.jpg") for u in urls)
    assert all(u.startswith("file://") for u in urls), [u for u in urls if not u.startswith("file://")]


@needs_chromium
def test_screenshot_of_the_page(run_dir, tmp_path):
    """A screenshot with `chromium --headless --screenshot` (look at it: tests/README or the report)."""
    from tests.browser import screenshot

    _, out, _ = run_dir
    shot = screenshot((out / "index.html").as_uri(), tmp_path / "page.png")
    image = cv2.imread(str(shot))
    assert image.shape[:2] == (1000, 1400) and image.std() > 10


# -- a daemon ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_daemon_rewrites_the_page_newest_first_and_a_restart_shows_the_whole_run(tmp_path, tiny_model):
    from tests.test_watch import Daemon, wait_for

    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "first.png", nodule_scan(240, 320, (160, 120), (50, 35), seed=1)[0])
    d = Daemon(src, out, tiny_model, "--report")
    page = out / "index.html"
    wait_for(lambda: page.exists() and 'data-scan="first.png"' in page.read_text(encoding="utf-8"), "the page")
    write_png(src / "second.png", nodule_scan(240, 320, (150, 110), (45, 35), seed=2)[0])
    wait_for(lambda: 'data-scan="second.png"' in page.read_text(encoding="utf-8"), "the page rewritten")
    html = page.read_text(encoding="utf-8")
    assert html.index('data-scan="second.png"') < html.index('data-scan="first.png"')  # newest first
    assert "Daemon running since" in html
    assert d.stop() == 0
    assert "Daemon ran from" in page.read_text(encoding="utf-8")
    page.unlink()
    d = Daemon(src, out, tiny_model, "--report")  # nothing to do: the page still holds the whole run
    wait_for(lambda: page.exists(), "the page after a restart")
    html = page.read_text(encoding="utf-8")
    assert 'data-scan="first.png"' in html and 'data-scan="second.png"' in html
    assert d.stop() == 0


def test_the_template_ships_in_the_package():
    import tomllib

    from tests.helpers import REPO

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    templates = sorted((REPO / "edge_runtime" / "outputs").glob(data["edge_runtime.outputs"][0]))
    assert [p.name for p in templates] == ["review.html.j2"]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.lower().startswith("jinja2") for d in deps)  # a runtime dependency, not an extra


def test_a_multi_frame_scan_shows_the_frame_with_the_nodule(tmp_path, tiny_model):
    pytest.importorskip("pydicom")
    from tests.helpers import write_dicom

    src, out = tmp_path / "in", tmp_path / "out"
    frames = [tissue(seed=1), nodule_scan(240, 320, (160, 120), (50, 35), seed=2)[0]]
    write_dicom(src / "cine.dcm", frames, pixel_spacing=(0.1, 0.2))
    assert main([str(src), "--out", str(out), "--model", str(tiny_model), "--report"]) == 0
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "frame 2 of 2" in html and 'href="overlays/cine_f0002.png"' in html
    report = json.loads((out / "reports" / "cine.json").read_text())
    nodule = report["frames"][1]["results"][0]["nodules"][0]
    axes = f"{nodule['long_axis_mm']:.1f} &times; {nodule['short_axis_mm']:.1f} mm</b>"
    assert f"{axes}, {nodule['area_mm2']:.1f} mm² ({nodule['area_px']:,} px)" in html  # mm and mm² when known
    thumb = cv2.cvtColor(cv2.imread(str(out / "overlays" / "cine.thumb.jpg")), cv2.COLOR_BGR2RGB).astype(int)
    green = (thumb[..., 1] > 200) & (thumb[..., 0] < 80) & (thumb[..., 2] < 80)
    assert green.sum() > 20  # the outline of frame 2 (frame 1 has none)


def test_a_page_that_cannot_be_written_is_one_error_line_and_exit_1(tmp_path, tiny_model, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    write_png(src / "a.png", nodule_scan(240, 320, (160, 120), (50, 35), seed=1)[0])
    (out / "index.html").mkdir(parents=True)  # in the way
    assert main([str(src), "--out", str(out), "--model", str(tiny_model), "--report"]) == 1
    lines = [r.getMessage() for r in caplog.records if "review page" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"cannot write the review page {out / 'index.html'}: ")
    assert (out / "a.png").exists() and (out / "reports" / "a.json").exists()  # the scans are done


def test_a_daemon_rewrites_the_page_only_when_something_changed_and_not_more_often_than_asked(tmp_path, tiny_model):
    from edge_runtime import Segmenter
    from edge_runtime.job.assemble import build_job
    from edge_runtime.job.review import PageKeeper
    from edge_runtime.job.settings import JobRequest, RunOptions

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    job = build_job(Segmenter(tiny_model), src, out, JobRequest(outputs=("review",)), RunOptions())
    try:
        assert job.spec.outputs == ("overlays", "reports", "review")  # the page implies both
        keeper = PageKeeper(job, ["edge-seg"], watch=True, every=3600.0)
        assert keeper.maybe_write() and (out / "index.html").exists()  # at start
        (out / "index.html").unlink()
        assert not keeper.maybe_write() and keeper.due_in() is None  # nothing changed
        keeper.changed()
        assert not keeper.maybe_write() and not (out / "index.html").exists()  # too soon
        assert 0 < keeper.due_in() <= 3600.0
        assert keeper.write(finished=True) and "Daemon ran from" in (out / "index.html").read_text()
    finally:
        job.close()
