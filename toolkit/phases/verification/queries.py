"""The --queries file: JSONL, one `{"query": "...", "relevant": [ids]}` per line (relevant optional).

Ids are primary-key values as the application knows them: a number or a string for a
one-column key, a list of values for a composite key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import BadInput
from toolkit.phases.verification.options import LabelledQuery


def key_text(value: Any, where: str) -> str:
    """A key value as verify compares keys: the text PostgreSQL prints for it (see Subject.key)."""
    if isinstance(value, bool) or value is None or isinstance(value, dict):
        raise BadInput(f"{where}: relevant id {value!r} is not a key value")
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)  # jsonb_build_array(...)::text prints the same
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_queries(path: Path) -> list[LabelledQuery]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BadInput(f"cannot read --queries file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"--queries file {path} is not UTF-8 text") from None
    queries: list[LabelledQuery] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("query"), str) or not item["query"].strip():
            raise BadInput(f'{where}: each line must be {{"query": "...", "relevant": [ids]}} with a non-empty query')
        relevant = item.get("relevant") or []
        if not isinstance(relevant, list):
            raise BadInput(f"{where}: relevant must be a list of ids")
        queries.append(LabelledQuery(item["query"], tuple(key_text(v, where) for v in relevant)))
    if not queries:
        raise BadInput(f"--queries file {path} has no queries")
    return queries
