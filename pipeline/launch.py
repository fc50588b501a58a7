"""Start several ``pipeline.search`` workers on this machine for one study.

    python -m pipeline.launch --workers 4 --gpus 0,1 -- model=seed_cnn +cluster=postgres

Every worker runs the same command with the overrides after ``--``, so they share the
study that the config names. With ``--gpus``, ``CUDA_VISIBLE_DEVICES`` limits worker
``i`` to GPU ``gpus[i % len(gpus)]``, so two workers per GPU need
``--workers 4 --gpus 0,1``. Workers on other machines join by running the same search
command. When a worker dies, the others go on, and its trial is recovered as a lost
trial by the next trial start of any worker.

The exit code is 0 when every worker exited with 0, and otherwise the first non-zero
worker exit code. SIGINT and SIGTERM are passed on to the workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import IO, Sequence

logger = logging.getLogger("pipeline.launch")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.launch",
        description="Start several pipeline.search workers on one study.",
    )
    parser.add_argument("--workers", type=int, required=True, help="number of worker processes to start")
    parser.add_argument(
        "--gpus",
        default=None,
        help="comma-separated GPU ids to spread the workers over, such as 0,1; by default workers see every device",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every worker, after --")
    arguments = parser.parse_args(argv)
    if arguments.workers < 1:
        parser.error(f"--workers must be 1 or more but got {arguments.workers}")

    if arguments.gpus is not None:
        gpus = [gpu.strip() for gpu in arguments.gpus.split(",") if gpu.strip()]
        if not gpus:
            parser.error(f"--gpus must list GPU ids such as 0,1 but got {arguments.gpus!r}")
        arguments.gpus = gpus
    return arguments


def worker_environment(index: int, gpus: list[str] | None) -> dict[str, str]:
    """Return worker ``index``'s environment, pinned to one GPU when ``gpus`` is given."""
    environment = {**os.environ, "PIPELINE_WORKER_INDEX": str(index)}
    if gpus:
        environment["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return environment


def _copy_output(index: int, stream: IO[str]) -> None:
    for line in stream:
        sys.stdout.write(f"[worker {index}] {line}")
        sys.stdout.flush()


def launch(workers: int, gpus: list[str] | None, overrides: Sequence[str]) -> int:
    """Run the workers to the end and return the launcher's exit code."""
    command = [sys.executable, "-m", "pipeline.search", *overrides]
    processes: list[subprocess.Popen] = []
    threads = []
    for index in range(workers):
        process = subprocess.Popen(
            command,
            env=worker_environment(index, gpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        device = f"GPU {gpus[index % len(gpus)]}" if gpus else "all devices"
        logger.info("worker %d started as process %d on %s", index, process.pid, device)
        thread = threading.Thread(target=_copy_output, args=(index, process.stdout), daemon=True)
        thread.start()
        threads.append(thread)

    def forward(signal_number: int, frame: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal_number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [process.wait() for process in processes]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for thread in threads:
        thread.join(timeout=5)

    # Popen reports a worker ended by a signal as minus the signal number; shells use 128 + it.
    codes = [code if code >= 0 else 128 - code for code in codes]
    for index, code in enumerate(codes):
        if code != 0:
            logger.warning("worker %d exited with code %d", index, code)
    return next((code for code in codes if code != 0), 0)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    return launch(arguments.workers, arguments.gpus, arguments.overrides)


if __name__ == "__main__":
    sys.exit(main())
