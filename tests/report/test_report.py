"""`aipo report`: a self-contained page with real plots, on finished, unfinished and s3:// runs."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from matplotlib import image as mpimg

from aipo_ray.cli import main
from aipo_ray.config import RunConfig
from aipo_ray.pipeline import StageContext, run_stage
from aipo_ray.report import write_report
from aipo_ray.storage import RunDir

from .runs import TableStage, build_run, iteration_tables

ALL_PLOTS = {"lengths", "sref_vs_length", "sref_distribution", "training", "stage_times"}


def non_blank(png: bytes) -> bool:
    """True when a real share of the image is not background (white or transparent)."""
    pixels = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    ink = np.any(pixels < 0.9, axis=-1)
    return ink.mean() > 0.01 and pixels.std() > 0.05


def embedded_sections(page: str) -> set[str]:
    return set(re.findall(r'<figure id="(\w+)"><img [^>]*src="data:image/png;base64,', page))


def missing_sections(page: str) -> set[str]:
    return set(re.findall(r'<div class="missing" id="(\w+)">not yet available</div>', page))


def test_report_embeds_nonblank_plots_of_every_finished_piece(tmp_path):
    run = tmp_path / "run"
    build_run(str(run), iterations=2)
    uri = write_report(str(run))
    assert uri == f"{run}/report/index.html"
    page = (run / "report" / "index.html").read_text()
    assert embedded_sections(page) == ALL_PLOTS
    assert missing_sections(page) == {"win_rate"}  # no eval.json yet
    assert not re.search(r'src="(?!data:)', page), "page must not load anything from outside"
    for key in ALL_PLOTS:
        assert non_blank((run / "report" / f"{key}.png").read_bytes()), key
    # the per-iteration table shows the numbers of stats.json
    for it in (1, 2):
        stats = json.loads((run / f"iter_00{it}" / "stats.json").read_text())
        assert f"<td>{stats['length']['chosen']['mean']:.2f}</td>" in page
        assert f"<td>{stats['s_ref']['agreement_rate']:.2f}</td>" in page
    assert "too_short: 1" in page  # rejected rows per filter


def test_report_shows_eval_json_win_rates(tmp_path):
    run = tmp_path / "run"
    rd = build_run(str(run), iterations=2)
    comps = [{"model": f"iter_00{i}", "baseline": f"iter_00{i - 1}", "kind": "vs_previous",
              "iteration": i, "n": 10, "wins": 6, "ties": 1, "losses": 3, "win_rate": 0.65,
              "win_rate_ci": [0.4, 0.85], "lc_win_rate": 0.55, "lc_win_rate_ci": [0.3, 0.8],
              "mean_length_diff": 4.0} for i in (1, 2)]
    models = {f"iter_00{i}": {"responses": 10, "mean_tokens": 20.0 + 15 * i, "mean_chars": 90.0,
                              "truncated": i} for i in (0, 1, 2)}
    rd.write_json("eval.json", {"comparisons": comps, "models": models})
    write_report(str(run), output=str(tmp_path / "out"))
    page = (tmp_path / "out" / "index.html").read_text()
    assert "win_rate" in embedded_sections(page)
    assert "0.650 [0.400, 0.850]" in page
    assert "<td class=l>iter_002</td><td>10</td><td>50.00</td>" in page  # answer length per model
    assert non_blank((tmp_path / "out" / "win_rate.png").read_bytes())


def test_report_on_a_run_in_progress_says_what_is_not_yet_available(tmp_path):
    run = tmp_path / "run"
    rd = build_run(str(run), iterations=1)
    # iteration 2 has only finished its prompts and generations; training has not started
    config = RunConfig.model_validate(rd.read_json("run.json")["config"])
    tables = iteration_tables(2)
    ctx = StageContext(config=config, run_dir=rd, iteration=2)
    run_stage(TableStage("prompts", tables["prompts"]), ctx)
    run_stage(TableStage("generations", tables["generations"]), ctx)
    rd.fs.makedirs(rd.stage_path(2, "rankings"), exist_ok=True)  # started, no _SUCCESS
    write_report(str(run))
    page = (run / "report" / "index.html").read_text()
    assert "2 (in progress)" in page
    assert embedded_sections(page) == ALL_PLOTS  # iteration 1 has everything
    assert not (run / "iter_002" / "stats.json").exists()
    # iteration 2's finished stage is listed with its rows (12 prompts × 4 candidates)
    assert "<td class=l>2</td><td class=l>generations</td><td>48</td><td>48</td>" in page


def test_report_of_a_run_that_has_only_started(tmp_path):
    run = tmp_path / "run"
    RunDir(str(run)).write_json("run.json", {"config": {"name": "fresh", "iterations": 3}})
    write_report(str(run))
    page = (run / "report" / "index.html").read_text()
    assert embedded_sections(page) == set()
    assert missing_sections(page) == ALL_PLOTS | {"win_rate"}
    assert "aipo run fresh" in page


def test_report_refuses_a_directory_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        write_report(str(tmp_path / "nope"))


def test_cli_report_writes_the_page(tmp_path, capsys):
    run = tmp_path / "run"
    build_run(str(run), iterations=1)
    assert main(["report", str(run), "--output", str(tmp_path / "r")]) == 0
    assert "report written" in capsys.readouterr().out
    assert (tmp_path / "r" / "index.html").exists()


def test_report_reads_and_writes_an_s3_run(s3_storage):
    storage, prefix = s3_storage
    build_run(prefix, iterations=1, storage=storage)
    uri = write_report(prefix, storage=storage)
    assert uri == f"{prefix}/report/index.html"
    rd = RunDir(prefix, storage)
    page = rd.fs.cat_file(rd.path("report", "index.html")).decode()
    assert embedded_sections(page) == ALL_PLOTS
    assert non_blank(rd.fs.cat_file(rd.path("report", "lengths.png")))


def test_a_damaged_part_file_costs_its_table_not_the_report(tmp_path):
    run = tmp_path / "run"
    build_run(str(run), iterations=2, stats=False)  # stats computed live by the report
    (run / "iter_002" / "ref_logps" / "part-00000.parquet").write_bytes(b"not parquet")
    write_report(str(run))
    page = (run / "report" / "index.html").read_text()
    assert "2 (in progress)" in page
    assert embedded_sections(page) == ALL_PLOTS  # iteration 1 still has every plot
