"""The real-repeat benchmark (benchmarks/repeats.py) at its --quick size on the APOGEE visits of ../shared/data."""

import json

import pytest

from benchmarks import repeats, report

from .conftest import shared_dir

VISITS = {"2M03442721+3220288": 16, "2M08501918+1056436": 12, "2M12241699+2453335": 8, "2M12294016+2619567": 8,
          "2M15010818+2250020": 5, "2M14402293+1339230": 4}   # the stars with most visits; 12 more have 2-3
FIGURES = ("noise left specae", "noise left PCA", "raw pair", "spread", "spread/raw", "specae/PCA", "in ±1", "in ±2")


@pytest.fixture(scope="module")
def quick(tmp_path_factory, one_thread):
    shared_dir("apogee_visits")
    argv = ["--quick", "--results-dir", str(tmp_path_factory.mktemp("results"))]
    return argv, repeats.main(argv)


def test_quick_run_writes_stamped_results(quick):
    argv, written = quick
    assert {p.name for p in written.values()} == {"repeats-apogee-quick.json", "repeats-apogee-quick.md"}
    data = json.loads(written["repeats-apogee-quick.json"].read_text())
    md = written["repeats-apogee-quick.md"].read_text()
    assert data["command"] == "python -m benchmarks.repeats " + " ".join(argv)
    assert data["commit"] == report.git_commit() and data["machine"]["torch_threads"] == 1
    assert data["figures"]["npix"] == 1000 and data["figures"]["n_visits"] == 86
    assert "| star | fold | visits | pairs |" in md and "Flagged" in md


def test_table_has_every_repeated_star_and_the_two_overall_rows(quick):
    _, written = quick
    data = json.loads(written["repeats-apogee-quick.json"].read_text())
    table, figures = data["table"], data["figures"]
    stars, overall = table[:-2], table[-2:]
    assert len(stars) == 18 and len({r["star"] for r in stars}) == 18 and all(list(r) == list(table[0]) for r in table)
    assert all(r["visits"] >= 2 and r["pairs"] == r["visits"] * (r["visits"] - 1) for r in stars)   # all pairs scored
    assert {r["star"]: r["visits"] for r in stars if r["star"] in VISITS} == VISITS
    for r in table:
        assert all(r[k] is not None and r[k] > 0 for k in FIGURES), r["star"]
        assert 0 < r["in ±1"] < r["in ±2"] < 1
    for r in stars:
        assert r["raw pair"] >= 0.9, r["star"]   # the raw pair cannot agree better than their noise allows
        assert r["flagged"] == (r["raw pair"] >= repeats.RAW_SANE) == (r["star"] in figures["flagged"])
    sane = [r for r in stars if not r["flagged"]]
    assert overall[0]["star"] == "all (18 stars)" and overall[0]["visits"] == sum(r["visits"] for r in stars)
    assert overall[1]["star"] == f"raw < 2 ({len(sane)} stars)" and overall[1]["pairs"] == sum(r["pairs"] for r in sane)
    assert overall[1]["raw pair"] < repeats.RAW_SANE
    for key, r in zip(("all", "sane"), overall):
        assert figures["overall"][key]["spread_over_raw"] == pytest.approx(r["spread/raw"])


def test_folds_are_star_disjoint(quick):
    _, written = quick
    data = json.loads(written["repeats-apogee-quick.json"].read_text())
    folds, stars = data["figures"]["folds"], data["table"][:-2]
    held = [set(f["held_out"]) for f in folds]
    assert len(folds) == 3 and sum(map(len, held)) == len(set.union(*held)) == 19
    assert all(r["star"] in held[r["fold"]] for r in stars)
    visits = {r["star"]: r["visits"] for r in stars}   # the one star missing from the table has a single visit
    for f, h in zip(folds, held):
        assert f["val_stars"] and not h & set(f["val_stars"])   # validation stars are among the training folds'
        assert f["train_visits"] + f["val_visits"] + sum(visits.get(s, 1) for s in h) == 86
