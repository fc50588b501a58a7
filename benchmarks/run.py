"""Run the benchmark suite and rewrite docs/benchmarks.md.

    python -m benchmarks.run [--data PATH] [--quick] [--only NAME ...]

``--data`` (or the environment variable PIPELINE_CIFAR10_PATH) names the CIFAR-10
copy, as ``data.path`` of the pipeline takes it. ``--quick`` is a smoke run on
generated colour images with tiny sizes: it checks that every benchmark still runs,
its figures mean nothing, and it writes its page and figures into the work folder
instead of docs/. Figures are stored in benchmarks/results.json, so ``--only``
replaces the rows of the named benchmarks and keeps the others.

Exit codes: 0 when every selected benchmark ran, 1 when one failed (its row gives the error),
2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import common, report

BENCHMARKS = ("overhead", "startup", "throughput", "pruning", "memory", "scaling", "gpu")
DEFAULT_OUTPUT = common.REPOSITORY / "docs" / "benchmarks.md"
DEFAULT_RESULTS = common.REPOSITORY / "benchmarks" / "results.json"
# Generated images per class for --quick: 60 training images give 54 for training and
# 6 for validation at the default validation_fraction of 0.1.
QUICK_TRAIN_PER_CLASS = 60
QUICK_TEST_PER_CLASS = 4


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get(common.DATA_VARIABLE), help=f"CIFAR-10 copy (default: ${common.DATA_VARIABLE})")
    parser.add_argument("--quick", action="store_true", help="smoke run on generated images with tiny sizes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--output", type=Path, help="results page (default docs/benchmarks.md; with --quick, in the work folder)")
    parser.add_argument("--results", type=Path, help="stored figures (default benchmarks/results.json; with --quick, in the work folder)")
    parser.add_argument("--work-dir", type=Path, help="scratch folder for studies, caches and logs (default: a new temporary folder)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the scratch folder; it is always kept after a failure")
    return parser.parse_args(argv)


def command_line(name: str, quick: bool) -> str:
    """Return the command that reproduces one benchmark's rows, with the data path left out."""
    return f"python -m benchmarks.run {'--quick' if quick else '--data DATA'} --only {name}"


def redact(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def run_benchmark(name: str, context: common.Context) -> tuple[list[common.Figure], bool]:
    """Run one benchmark; a failure becomes a "not run" row with the error."""
    started = time.monotonic()
    context.log(f"== {name}: started, load average {common.load_average()}")
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        figures = module.run(context)
        ok = True
    except Exception as error:  # Any failure of one benchmark is reported and the next one runs.
        traceback.print_exc()
        figures = [common.Figure(name, "benchmark failed", "not run", f"{type(error).__name__}: {error}", "not run")]
        ok = False
    context.log(f"== {name}: {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return figures, ok


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    selected = options.only or list(BENCHMARKS)
    if not options.quick and not options.data:
        print(
            f"error: no data: pass --data PATH or set {common.DATA_VARIABLE} to the CIFAR-10 copy, "
            "or use --quick for a smoke run on generated images.",
            file=sys.stderr,
        )
        return 2

    work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="pipeline-benchmarks-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if options.quick:
        data_path = str(common.write_colour_tree(work_dir / "data", QUICK_TRAIN_PER_CLASS, QUICK_TEST_PER_CLASS))
        data_label = "generated colour images"
    else:
        data_path = os.path.abspath(options.data)
        data_label = "CIFAR-10"
    output = options.output or (work_dir / "benchmarks.md" if options.quick else DEFAULT_OUTPUT)
    results = options.results or (work_dir / "results.json" if options.quick else DEFAULT_RESULTS)
    context = common.Context(
        quick=options.quick, data_path=data_path, data_label=data_label, work_dir=work_dir, log=log,
        artifact_dir=results.parent,
    )

    machine = common.machine_facts()
    replacements = {data_path: "DATA", str(work_dir): "WORK"}
    rows, failed = [], []
    for name in selected:
        figures, ok = run_benchmark(name, context)
        if not ok:
            failed.append(name)
        date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        for figure in figures:
            row = {key: redact(str(value), replacements) for key, value in dataclasses.asdict(figure).items()}
            rows.append({**row, "command": command_line(name, options.quick), "machine": machine, "date": date})

        # Save after every benchmark, so a long run that stops keeps what it measured.
        merged = report.merge_rows(report.load_rows(results), rows, selected[: selected.index(name) + 1])
        report.save_rows(results, merged)
        report.write_page(output, merged, BENCHMARKS)

    log(f"results: {output} and {results}")
    if failed:
        log(f"failed: {', '.join(failed)}; logs kept in {work_dir}")
    elif not options.keep_work_dir and options.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
