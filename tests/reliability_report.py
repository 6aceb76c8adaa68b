"""Render the figures the reliability tests recorded as the markdown table of docs/reliability.md.

    pytest tests/test_reliability_*.py            # default run (also: -m soak for the soaks)
    python tests/reliability_report.py            # prints the table

Reads $REEMBED_RELIABILITY_RESULTS (default: <tmp>/reembed-reliability-results.jsonl), one JSON
line per measured scenario, written by reliability_support.record(); the last line of each
(item, scenario) wins.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_support import RESULTS  # noqa: E402


def _figures(figures: dict) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} {x}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(str(x) for x in v) + "]"
        return str(v)
    return "; ".join(f"{k.replace('_', ' ')}: {fmt(v)}" for k, v in figures.items())


def main(path: Path = RESULTS) -> None:
    rows: dict[tuple[str, str], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            rows[(entry["item"], entry["scenario"])] = entry
    print("| item | scenario | outcome | figures |")
    print("|---|---|---|---|")
    for (item, scenario), entry in sorted(rows.items(), key=lambda kv: kv[0][0]):
        cells = [item, scenario, entry["outcome"], _figures(entry["figures"])]
        print("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS)
