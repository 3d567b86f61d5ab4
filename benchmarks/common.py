"""What the benchmark scripts share: writing their result JSON."""
from __future__ import annotations

import os
from typing import Any

from cache.atomic import write_json_atomic


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` as JSON (indent 2, no trailing newline), atomically; parent created."""
    write_json_atomic(path, result, indent=2)
