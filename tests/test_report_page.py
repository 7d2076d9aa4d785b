"""The experiment report reads at a glance: its main table fits a 1300 px browser window, and the
columns that tell no arm from another (the 135M self-judge's 0/N, coherent %, the A/B probe at
chance) fold into a note instead of taking a column."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from conscience.experiment.report import AB_COLUMN, COLUMNS, FOLDED_NOTE, fold_uninformative, write_experiment_report

PEERS = Path(__file__).resolve().parent.parent / "results" / "exp-peers" / "results.json"
JUDGE, COHERENT, CODE = "judge: misaligned % (95% CI)", "coherent %", "code findings %"


_ROWS = iter(range(10**6))


def _row(**cells: str) -> list[str]:
    """A table row with the given cells; every other cell differs from every other row's."""
    n = next(_ROWS)
    return [cells.get(c, f"{c}-{n}") for c in COLUMNS]


def test_columns_that_tell_no_arm_apart_fold_into_notes():
    rows = [_row(**{AB_COLUMN: "50.1", JUDGE: "0.0 (0.0–5.1), 0/72", COHERENT: "0.0", CODE: "–", "seeds": "0,1,2"}),
            _row(**{AB_COLUMN: "49.9", JUDGE: "0.0 (0.0–5.1), 0/72", COHERENT: "0.0", CODE: "–", "seeds": "0,1,2"})]
    columns, kept, notes = fold_uninformative(COLUMNS, rows)
    assert not {AB_COLUMN, JUDGE, COHERENT, CODE, "seeds"} & set(columns)
    assert columns == [c for c in COLUMNS if c not in {AB_COLUMN, JUDGE, COHERENT, CODE, "seeds"}]
    assert all(len(r) == len(columns) for r in kept) and kept[0][0] == rows[0][0]
    assert notes == [f"{AB_COLUMN}: 49.9–50.1 in every arm, within 1 point of chance (50 %): the model does not "
                     "answer the A/B question at this size",
                     f"{JUDGE}: 0.0 (0.0–5.1), 0/72 in every arm", f"{COHERENT}: 0.0 in every arm",
                     f"{CODE}: not measured in this scenario", "seeds: 0,1,2 in every arm"]


def test_columns_that_differ_or_carry_the_result_stay():
    rows = [_row(**{AB_COLUMN: "50.1", JUDGE: "0.0 (0.0–5.1), 0/72", COHERENT: "0.0", "seeds with drift > 0": "3/3",
                    "no EM": "✗"}),
            _row(**{AB_COLUMN: "53.0", JUDGE: "2.8 (0.8–9.6), 2/72", COHERENT: "0.0", "seeds with drift > 0": "3/3",
                    "no EM": "✗"})]
    columns, _, notes = fold_uninformative(COLUMNS, rows)
    assert AB_COLUMN in columns and JUDGE in columns  # the A/B probe left chance in one arm; the judge found 2
    assert COHERENT not in columns and notes == [f"{COHERENT}: 0.0 in every arm"]
    assert "seeds with drift > 0" in columns and "no EM" in columns  # results, never folded
    unmeasured = [_row(**{AB_COLUMN: "–"}), _row(**{AB_COLUMN: "50.0"})]
    assert AB_COLUMN in fold_uninformative(COLUMNS, unmeasured)[0]
    one_arm = [_row(**{COHERENT: "0.0"})]
    assert fold_uninformative(COLUMNS, one_arm)[0] == list(COLUMNS)


def _peers() -> dict:
    if not PEERS.exists():
        pytest.skip(f"{PEERS} (the stored peers run) is not in this checkout")
    return json.loads(PEERS.read_text(encoding="utf-8"))


def _every_column_informative(results: dict) -> dict:
    """The peers run with every foldable column made to differ between arms: nothing folds."""
    results = copy.deepcopy(results)
    for i, row in enumerate(results["rows"]):
        row.update(misaligned=i, misaligned_rate=i / 72, ci_low=0.0, ci_high=0.2, coherent_share=0.5 + i / 40,
                   code_finding_rate=0.1 * i, seeds=[i, i + 1, i + 2])
        row["drift"]["ab_misaligned"] = 0.4 + i / 50
    return results


def test_the_report_of_the_peers_run_folds_its_empty_columns(tmp_path):
    md_path, html_path = write_experiment_report(tmp_path, _peers())
    md = md_path.read_text(encoding="utf-8")
    header = md.split("\n\n")[1].splitlines()[0]
    assert header.startswith("| model | drift (95% CI) | seeds with drift > 0 | prefers misaligned % |")
    assert AB_COLUMN not in header and JUDGE not in header and COHERENT not in header
    assert FOLDED_NOTE in md and f"- {JUDGE}: 0.0 (0.0–5.1), 0/72 in every arm" in md
    assert f"{JUDGE}: 0.0 (0.0–5.1), 0/72 in every arm" in html_path.read_text(encoding="utf-8")


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="headless Chromium (apt-get install chromium chromium-driver) is not installed")
@pytest.mark.parametrize("variant", ["peers run", "every column informative"])
def test_the_main_table_fits_a_1300_px_window(tmp_path, variant):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    results = _peers() if variant == "peers run" else _every_column_informative(_peers())
    _, html_path = write_experiment_report(tmp_path / "report", results)
    expected = [c for c in COLUMNS if variant != "peers run" or c not in {AB_COLUMN, JUDGE, COHERENT, CODE, "seeds"}]
    if variant != "peers run":
        assert len(expected) == len(COLUMNS)  # nothing folded: the page layout alone must make it fit
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.set_window_rect(0, 0, 1300, 900)
        driver.get(html_path.as_uri())
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        assert 1250 <= viewport <= 1300
        headers = driver.find_elements(By.CSS_SELECTOR, "#results th")
        assert [h.text.replace("\n", " ") for h in headers] == expected
        for cell in [*headers, *driver.find_elements(By.CSS_SELECTOR, "#results tr:last-child td")]:
            left, right = driver.execute_script(
                "const r = arguments[0].getBoundingClientRect(); return [r.left, r.right]", cell)
            assert 0 <= left and right <= viewport, f"{cell.text!r} lies outside the window ({left}–{right} px)"
        assert driver.execute_script("return document.documentElement.scrollWidth") <= viewport  # no sideways scroll
        driver.save_screenshot(str(tmp_path / "report.png"))  # kept for a person to look at when it fails
    finally:
        driver.quit()
