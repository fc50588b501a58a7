"""Render the stored figures into the results page between two markers.

Text outside the markers (method notes and conclusions) is kept as it is, so the page
can carry hand-written analysis while the runner replaces the tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

START_MARKER = "<!-- BEGIN GENERATED RESULTS: python -m benchmarks.run replaces everything up to the end marker -->"
END_MARKER = "<!-- END GENERATED RESULTS -->"

NEW_PAGE = f"""# Benchmarks

Run the suite with `python -m benchmarks.run [--data PATH] [--quick] [--only NAME ...]`.

{START_MARKER}
{END_MARKER}
"""


def load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return json.loads(path.read_text())


def save_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=1) + "\n")


def merge_rows(old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]], replaced: Sequence[str]) -> list[dict[str, Any]]:
    """Keep the old rows of benchmarks that did not run this time and add the new ones."""
    return [row for row in old if row["benchmark"] not in replaced] + list(new)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _machine_label(machine: dict[str, Any]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in sorted(machine["versions"].items()))
    return (
        f"{machine['cores']} cores, {machine['cpu']}, Python {machine['python']}, "
        f"Keras backend {machine['backend']}; {versions}"
    )


def render(rows: Sequence[dict[str, Any]], order: Sequence[str]) -> str:
    """Return the generated block: the machines, then one table row per figure."""
    machines: list[str] = []
    for row in rows:
        label = _machine_label(row["machine"])
        if label not in machines:
            machines.append(label)

    lines = ["## Machines", ""]
    lines += [f"- **M{index + 1}**: {label}" for index, label in enumerate(machines)]
    lines += ["", "## Results", ""]
    rank = {name: index for index, name in enumerate(order)}
    for benchmark in sorted({row["benchmark"] for row in rows}, key=lambda name: rank.get(name, len(rank))):
        lines += [f"### {benchmark}", "", "| figure | value | how it was measured | status | command | machine | date |", "|---|---|---|---|---|---|---|"]
        for row in rows:
            if row["benchmark"] != benchmark:
                continue
            machine = f"M{machines.index(_machine_label(row['machine'])) + 1}"
            lines.append(
                f"| {_cell(row['name'])} | {_cell(row['value'])} | {_cell(row['detail'])} | {_cell(row['status'])} "
                f"| `{_cell(row['command'])}` | {machine} | {_cell(row['date'])} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_page(path: Path, rows: Sequence[dict[str, Any]], order: Sequence[str]) -> None:
    """Replace the generated block of the page at ``path``, creating the page when it is missing."""
    page = path.read_text() if path.exists() else NEW_PAGE
    if START_MARKER not in page or END_MARKER not in page:
        raise ValueError(f"{path} lacks the markers of the generated block; add {START_MARKER!r} and {END_MARKER!r}")

    before, rest = page.split(START_MARKER, 1)
    _, after = rest.split(END_MARKER, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{before}{START_MARKER}\n{render(rows, order)}{END_MARKER}{after}")
