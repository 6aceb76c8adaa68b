"""The tag on the live vector column that tells an application which model filled it.

An application switches its query model at the swap by reading the comment of its own column
(`col_description`, no rights on schema `reembed` needed): after cutover the column under the
original name carries a JSON tag naming the model, its task types and dimensions; after a
rollback it carries again what it carried before the cutover. A comment the user wrote is
never replaced: such a column keeps it, and the application reads `reembed.plans` instead.
"""

from __future__ import annotations

import json
from typing import Any

from toolkit.plan import Plan


def live_tag(plan: Plan) -> str:
    """The tag of the column while the plan's target model's vectors are under its name."""
    ref = plan.target_ref
    return json.dumps({"reembed": True, "role": "live", "provider": ref.provider, "model": ref.model,
                       "document_task": plan.document_task, "query_task": plan.query_task,
                       "dimensions": plan.dimensions, "plan": plan.name})


def is_tag(comment: str | None) -> bool:
    """Whether `comment` is one reembed wrote (so reembed may replace it), not the user's."""
    if comment is None:
        return False
    try:
        parsed: Any = json.loads(comment)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("reembed") is True


def replaceable(comment: str | None) -> bool:
    """A missing comment, or one of reembed's: the swap may put its tag there."""
    return comment is None or is_tag(comment)
