"""The worker launcher: arguments, GPU pinning and exit codes of real worker processes."""

from __future__ import annotations

import os

import pytest

from pipeline.launch import launch, parse_arguments, worker_environment

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arguments_overrides_after_dashes():
    arguments = parse_arguments(["--workers", "3", "--gpus", "0,1", "--", "model=plain_deep", "study.n_trials=9"])

    assert arguments.workers == 3
    assert arguments.gpus == ["0", "1"]
    assert arguments.overrides == ["model=plain_deep", "study.n_trials=9"]


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--workers", "2", "--gpus", ","]])
def test_parse_arguments_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_arguments(argv)

    assert caught.value.code == 2
    assert "must" in capsys.readouterr().err


def test_worker_environment_pins_gpus_round_robin():
    pinned = [worker_environment(index, ["0", "1"])["CUDA_VISIBLE_DEVICES"] for index in range(4)]

    assert pinned == ["0", "1", "0", "1"]
    assert worker_environment(2, ["0", "1"])["PIPELINE_WORKER_INDEX"] == "2"


def test_worker_environment_without_gpus_keeps_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    assert "CUDA_VISIBLE_DEVICES" not in worker_environment(0, None)


def test_launch_returns_worker_exit_code(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", REPOSITORY)

    code = launch(2, None, ["study.sampler=annealing"])

    output = capsys.readouterr().out
    assert code == 2
    assert output.count("error: study.sampler must be one of") == 2
    assert "[worker 0]" in output
    assert "[worker 1]" in output
