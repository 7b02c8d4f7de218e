"""The review page end to end in headless Chromium: keys change labels, the CSVs follow.

Uses Debian's chromium (``apt-get install chromium``) driven by Playwright; Playwright's own
browser downloads are never used. Skipped only when /usr/bin/chromium is missing. The images
are a copy of the glasses demo data (conftest.py).
"""

from __future__ import annotations

import csv
import os
import pathlib

import pytest

from pipelines.review.cli import create_app, parse_args
from pipelines.review.server import running_server
from tests.pipelines.review.client import read_rows

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)"
)


def write_predictions(path: pathlib.Path, images: pathlib.Path, truth: dict[str, int]) -> pathlib.Path:
    """The trainer's predict CSV: the model agrees with train.csv except on face 7, where it is sure it is wrong."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "probability", "label"])
        for image_id, label in truth.items():
            probability = (0.02 if label else 0.98) if image_id == "7" else (0.9 if label else 0.1)
            writer.writerow([images / "faces-spring-2020" / f"face-{image_id}.png", probability, ""])
    return path


def test_keyboard_review_in_a_real_browser(images, tmp_path, capsys):
    from playwright.sync_api import expect, sync_playwright

    with open(images / "train.csv", newline="") as f:
        truth = {row["id"]: int(row["glasses"]) for row in csv.DictReader(f)}
    overrides, exclusions = tmp_path / "overrides.csv", tmp_path / "exclusions.csv"
    predictions = write_predictions(tmp_path / "predictions.csv", images, truth)
    argv = ["--images", str(images), "--dataset", "glasses", "--port", "0", "--predictions", str(predictions)]
    app = create_app(*parse_args([*argv, "--overrides_csv", str(overrides), "--exclude_csv", str(exclusions)]))
    with running_server(app) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]")
            tiles = page.locator(".tile")
            expect(tiles).to_have_count(9)
            expect(page.locator(".tile .thumb img")).to_have_count(9)  # Every thumbnail loaded.
            ids = [tiles.nth(n).get_attribute("data-id") for n in range(9)]
            assert ids == [str(i) for i in range(1, 10)]

            page.keyboard.press("2")  # Flip the label of tile 2.
            expect(tiles.nth(1)).to_have_class("tile overridden reviewed")
            expect(tiles.nth(1).locator(".was")).to_have_text(f"was {app.store.classes[truth['2']]}")
            page.keyboard.press("Shift+Digit3")  # Exclude tile 3.
            expect(tiles.nth(2)).to_have_class("tile excluded reviewed")
            page.keyboard.press("x")
            expect(page.locator("#mode")).to_contain_text("exclude")
            page.keyboard.press("4")  # x then 4 excludes tile 4 ...
            expect(tiles.nth(3)).to_have_class("tile excluded reviewed")
            page.keyboard.press("u")  # ... and undo re-includes it.
            expect(tiles.nth(3)).to_have_class("tile reviewed")
            expect(page.locator("#toast")).to_contain_text("Undid the exclusion of 4")

            assert read_rows(overrides) == [["id", "glasses"], ["2", str(1 - truth["2"])]]
            assert read_rows(exclusions) == [["id"], ["3"]]

            page.keyboard.press("n")  # Next page: the first nine are reviewed.
            expect(page.locator("#page-info")).to_contain_text("page 2 / 5")
            expect(tiles.first).to_have_attribute("data-id", "10")
            expect(page.locator("#progress-text")).to_contain_text("9 / 40 reviewed · 1 overridden · 1 excluded")
            page.keyboard.press("l")  # The unlabelled filter: test.csv's four faces.
            expect(tiles).to_have_count(4)
            expect(page.locator("#filters button.active")).to_have_text("lunlabelled")
            page.keyboard.press("d")  # Most disagreeing first: face 7, then face 2 (flipped above).
            expect(page.locator("#filters button.active")).to_have_text("dmost disagreeing")
            expect(tiles.nth(0)).to_have_attribute("data-id", "7")
            expect(tiles.nth(1)).to_have_attribute("data-id", "2")
            page.keyboard.press("a")  # Back to all, at the first page not reviewed yet ...
            expect(page.locator("#filters button.active")).to_have_text("aall")
            expect(tiles.first).to_have_attribute("data-id", "10")
            page.keyboard.press("ArrowLeft")  # ... and one page back for the screenshot.
            expect(tiles.first).to_have_attribute("data-id", "1")
            expect(page.locator("#page-info")).to_contain_text("page 1 / 5")
            expect(page.locator(".tile .thumb img")).to_have_count(9)
            page.mouse.move(0, 0)
            screenshot = tmp_path / "review_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert problems == []
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nreview page screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
