"""Benchmark suite: the runner's smoke mode on generated images, and its pure helpers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmarks package is not installed with the project, so import it from the checkout.
if REPOSITORY not in sys.path:
    sys.path.insert(0, REPOSITORY)

from benchmarks import common, memory, pruning, report, throughput  # noqa: E402
from benchmarks.run import BENCHMARKS  # noqa: E402

# Two runners in parallel, each with its own scratch folder: most of a smoke run is
# single-threaded imports and SQLite set-up, so two of them share two cores well.
RUNNER_GROUPS = (("overhead", "startup", "throughput", "memory"), ("pruning", "scaling", "gpu"))


def test_runner_groups_cover_every_benchmark():
    assert sorted(name for group in RUNNER_GROUPS for name in group) == sorted(BENCHMARKS)


def test_quick_run_every_benchmark(tmp_path):
    docs_page = os.path.join(REPOSITORY, "docs", "benchmarks.md")
    results_file = os.path.join(REPOSITORY, "benchmarks", "results.json")
    before = {path: os.stat(path).st_mtime_ns for path in (docs_page, results_file) if os.path.exists(path)}

    runs = []
    for index, group in enumerate(RUNNER_GROUPS):
        work_dir = tmp_path / f"group-{index}"
        command = [sys.executable, "-m", "benchmarks.run", "--quick", "--work-dir", str(work_dir), "--only", *group]
        process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        runs.append((group, work_dir, process))

    for group, work_dir, process in runs:
        output, _ = process.communicate(timeout=900)
        assert process.returncode == 0, output[-4000:]

        rows = json.loads((work_dir / "results.json").read_text())
        assert {row["benchmark"] for row in rows} == set(group)
        assert {row["status"] for row in rows} <= {"smoke", "not run"}
        assert all(row["command"].startswith("python -m benchmarks.run --quick --only ") for row in rows)
        page = (work_dir / "benchmarks.md").read_text()
        for name in group:
            assert f"### {name}" in page

    after = {path: os.stat(path).st_mtime_ns for path in before}
    assert after == before, "a --quick run must not rewrite docs/benchmarks.md or benchmarks/results.json"


def test_runner_without_data_exits_2(monkeypatch, capsys):
    from benchmarks import run

    monkeypatch.delenv(common.DATA_VARIABLE, raising=False)
    assert run.main(["--only", "memory"]) == 2
    assert "--data" in capsys.readouterr().err


def test_report_keeps_text_outside_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nintro\n\n{report.START_MARKER}\nold table\n{report.END_MARKER}\n\n## Notes\n\nkept\n")
    machine = {"cores": 2, "cpu": "test cpu", "python": "3.11", "backend": "tensorflow", "versions": {"keras": "3"}}
    row = {"benchmark": "memory", "name": "growth", "value": "1 | 2", "detail": "d", "status": "measured", "command": "c", "machine": machine, "date": "today"}

    report.write_page(page, [row], BENCHMARKS)

    text = page.read_text()
    assert text.startswith("# Title\n\nintro\n")
    assert text.endswith("## Notes\n\nkept\n")
    assert "old table" not in text
    assert "| growth | 1 \\| 2 |" in text
    assert "**M1**: 2 cores, test cpu" in text


def test_report_merge_replaces_rerun_benchmarks():
    old = [{"benchmark": "memory", "name": "a"}, {"benchmark": "pruning", "name": "b"}]
    new = [{"benchmark": "memory", "name": "c"}]

    merged = report.merge_rows(old, new, ["memory"])

    assert merged == [{"benchmark": "pruning", "name": "b"}, {"benchmark": "memory", "name": "c"}]


def test_replay_prunes_curve_below_median():
    good = [0.5, 0.6, 0.7]
    bad = [0.1, 0.1, 0.1]

    replay = pruning.replay_median_pruner([good, good, bad, good], n_startup_trials=2, n_warmup_steps=0)

    assert replay["epochs"] == 3 + 3 + 1 + 3
    assert replay["best"] == pytest.approx(0.7)


def test_replay_warmup_delays_pruning():
    curves = [[0.5, 0.6], [0.5, 0.6], [0.1, 0.1]]

    replay = pruning.replay_median_pruner(curves, n_startup_trials=2, n_warmup_steps=1)

    assert replay["epochs"] == 6


def test_replay_keeps_last_epoch():
    curves = [[0.5, 0.6], [0.5, 0.6], [0.1, 0.9]]

    replay = pruning.replay_median_pruner(curves, n_startup_trials=2, n_warmup_steps=1)

    assert replay["best"] == pytest.approx(0.9)


def test_memory_slope_of_line():
    assert memory.slope([10.0, 12.0, 14.0, 16.0]) == pytest.approx(2.0)
    assert memory.slope([5.0, 5.0, 5.0]) == pytest.approx(0.0)


def test_throughput_order_brackets_settings_with_reference():
    reference = {"batch_size": 128}
    grid = [{"batch_size": size} for size in (1, 2, 3, 4, 5)]

    order = throughput.ordered_settings(reference, grid)

    assert [setting["reference"] for setting in order] == [True, False, False, False, False, True, False, True]
    assert [setting["batch_size"] for setting in order if not setting["reference"]] == [1, 2, 3, 4, 5]


def test_spread_percent():
    assert common.spread_percent([9.0, 11.0]) == pytest.approx(20.0)
    assert math.isnan(common.spread_percent([1.0]))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "Expecting value"),
        ("[1, 2]", 'expected a JSON object with "settings" and "curves"'),
        ('{"settings": {"epochs": 2}, "curves": 5}', "curves must be a non-empty list"),
        ('{"settings": {"epochs": 2}, "curves": [[["x"]]]}', "each curve must be a non-empty list of numbers"),
        ('{"settings": {}, "curves": [[[0.1, 0.2]]]}', "settings.epochs must be a positive integer"),
    ],
)
def test_pruning_replay_rejects_bad_curves_file(tmp_path, capsys, content, expected):
    path = tmp_path / "curves.json"
    path.write_text(content)

    assert pruning.main([str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_pruning_replay_prints_one_line_per_setting(tmp_path, capsys):
    path = tmp_path / "curves.json"
    path.write_text(json.dumps({"settings": {"epochs": 2}, "curves": [[[0.5, 0.6], [0.5, 0.6], [0.1, 0.1]]]}))

    assert pruning.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pruning.replay_settings(2))
    assert lines[0].startswith("median, n_startup_trials=2, n_warmup_steps=0: epochs ")
