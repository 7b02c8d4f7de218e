"""The review page end to end in headless Chromium: keys change labels, the CSVs follow.

Uses Debian's chromium (``apt-get install chromium``) driven by Playwright; Playwright's own
browser downloads are never used. Skipped only when /usr/bin/chromium is missing. The images
are a copy of the glasses demo data (conftest.py).
"""

from __future__ import annotations

import contextlib
import csv
import os
import pathlib
from collections.abc import Iterator

import pytest

from pipelines.review.cli import create_app, parse_args
from pipelines.review.server import ReviewServer, running_server
from tests.pipelines.review.client import (
    CLASSES,
    read_rows,
    review_argv,
    train_labels,
    write_label_issues,
    write_quality,
)

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


@contextlib.contextmanager
def browser_page(server: ReviewServer, problems: list[str]) -> Iterator:
    """The review page in headless Chromium, ready; page errors and console warnings go to ``problems``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]")
            yield page
        finally:
            browser.close()


def test_keyboard_review_in_a_real_browser(images, tmp_path, capsys):
    from playwright.sync_api import expect

    with open(images / "train.csv", newline="") as f:
        truth = {row["id"]: int(row["glasses"]) for row in csv.DictReader(f)}
    overrides, exclusions = tmp_path / "overrides.csv", tmp_path / "exclusions.csv"
    predictions = write_predictions(tmp_path / "predictions.csv", images, truth)
    argv = ["--images", str(images), "--dataset", "glasses", "--port", "0", "--predictions", str(predictions)]
    app = create_app(*parse_args([*argv, "--overrides_csv", str(overrides), "--exclude_csv", str(exclusions)]))
    problems: list[str] = []
    with running_server(app) as server, browser_page(server, problems) as page:
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
    with capsys.disabled():
        print(f"\nreview page screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000


def test_suspects_quality_outliers_and_duplicate_groups_in_a_real_browser(images, tmp_path, capsys):
    from playwright.sync_api import expect

    truth = train_labels(images)
    issues = write_label_issues(
        tmp_path / "label_issues.csv",
        [
            ("5", CLASSES[truth["5"]], CLASSES[1 - truth["5"]], -0.93, 1),
            ("12", CLASSES[truth["12"]], CLASSES[1 - truth["12"]], -0.41, 2),
        ],
    )
    leaking = {"members": ["4", "20", "33", "36"], "member_splits": ["train", "test", "train", "train"]}
    groups = [
        {"members": ["1", "8"], "member_splits": ["train", "train"], "kind": "exact"},
        {**leaking, "kind": "near"},
    ]
    quality = write_quality(
        tmp_path / "out" / "quality", {"2": ["blurry"], "3": ["dark", "low_contrast"], "9": []}, groups
    )
    argv = review_argv(images, tmp_path, "--label_issues", str(issues), "--quality_dir", str(quality))
    app = create_app(*parse_args(argv))
    problems: list[str] = []
    with running_server(app) as server, browser_page(server, problems) as page:
        tiles = page.locator(".tile")
        expect(page.locator("#filters button")).to_have_count(6)  # No --predictions: no "most disagreeing".

        page.keyboard.press("s")  # Suspects in rank order, given -> suggested label and score.
        expect(page.locator("#filters button.active")).to_have_text("ssuspects")
        expect(tiles).to_have_count(2)
        expect(tiles.nth(0)).to_have_attribute("data-id", "5")
        suggestion = tiles.nth(0).locator(".suggest")
        expect(suggestion.locator(".given")).to_have_text(CLASSES[truth["5"]])
        expect(suggestion.locator(".label")).to_have_text(CLASSES[1 - truth["5"]])
        expect(suggestion.locator(".score")).to_have_text("-0.93")
        page.keyboard.press("y")
        expect(page.locator("#mode")).to_contain_text("accept")
        page.keyboard.press("1")  # y then 1 accepts tile 1's suggestion: an override, as a flip writes it.
        expect(tiles.nth(0)).to_have_class("tile overridden reviewed")
        expect(tiles.nth(0).locator(".accepted")).to_have_text("✓")
        expect(tiles.nth(0).locator(".caption .label")).to_have_text(CLASSES[1 - truth["5"]])
        assert read_rows(tmp_path / "overrides.csv") == [["id", "glasses"], ["5", str(1 - truth["5"])]]
        tiles.nth(1).locator("button.accept").click()  # The tile's button does the same.
        expect(tiles.nth(1)).to_have_class("tile overridden reviewed")
        page.keyboard.press("u")
        expect(page.locator("#toast")).to_contain_text("Undid the label change of 12")
        assert read_rows(tmp_path / "overrides.csv")[1:] == [["5", str(1 - truth["5"])]]

        page.keyboard.press("k")  # Duplicate groups: the leaking one first, each on rows of its own.
        expect(page.locator("#filters button.active")).to_have_text("kduplicate groups")
        expect(tiles).to_have_count(6)
        expect(page.locator(".tile .thumb img")).to_have_count(6)
        assert [tiles.nth(n).get_attribute("data-id") for n in range(6)] == ["4", "20", "33", "36", "1", "8"]
        rows = [round(tiles.nth(n).bounding_box()["y"]) for n in range(6)]
        assert rows[0] == rows[1] == rows[2] < rows[3] < rows[4] == rows[5]  # 36 alone on the second row.
        expect(tiles.nth(0)).to_have_class("tile kept")
        expect(tiles.nth(0).locator(".dup")).to_contain_text("leakage")
        expect(tiles.nth(1).locator(".dup")).to_contain_text("group 1 · near · test")
        expect(tiles.nth(4).locator(".dup .keep")).to_have_text("kept")
        expect(tiles.nth(5).locator(".dup .copy")).to_have_text("copy")
        page.keyboard.press("Shift+Digit8")  # Slot 8 is face 8 (slot 7 is 1, slots 5-6 are empty): exclude it.
        expect(tiles.nth(5)).to_have_class("tile excluded reviewed")
        assert read_rows(tmp_path / "exclusions.csv") == [["id"], ["8"]]
        page.mouse.move(0, 0)
        screenshot = tmp_path / "duplicate_groups.png"
        page.screenshot(path=str(screenshot), full_page=True)

        page.keyboard.press("q")  # Quality outliers, most reasons first, the reasons shown.
        expect(page.locator("#filters button.active")).to_have_text("qquality outliers")
        expect(tiles).to_have_count(2)
        expect(tiles.nth(0)).to_have_attribute("data-id", "3")
        expect(tiles.nth(0).locator(".flag")).to_have_text(["dark", "low_contrast"])
        expect(tiles.nth(1).locator(".flag")).to_have_text(["blurry"])
    assert problems == []
    with capsys.disabled():
        print(f"\nduplicate groups screenshot: {screenshot}")
