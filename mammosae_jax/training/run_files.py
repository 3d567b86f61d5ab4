"""The small files of a run folder: config.json and metrics.jsonl (atomic where it matters)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cache.atomic import write_text_atomic

CONFIG = "config.json"
METRICS = "metrics.jsonl"


def write_json_atomic(path: Path, obj: Any) -> None:
    """The run folder's JSON layout (indent 2, sorted keys, final newline), written atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class MetricsLog:
    """Append-only JSON lines; `truncate_after(step)` drops lines a resumed run will redo."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Keep only the records with step <= `step` (atomic rewrite)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if record.get("step", 0) <= step:
                keep.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line]
