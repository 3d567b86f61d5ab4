"""Helpers of CacheWriter: JSON normalisation, the row table, and surviving a failed write.

HDF5 cannot recover from a failed write (disk full, `ulimit -f`): the file's objects report the
error again whenever they are freed and the library crashes at interpreter exit. So the writer
checks for room before each batch (`check_room`); if a write fails anyway it records the shard
here (`hdf5_write_failed`) and the CLI wrapper (cache/cli_errors.py) ends the process at once.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import CacheError, CacheInputError, CacheWriteError

HDF5_WRITE_FAILED: list = []  # shards whose HDF5 writes failed; the library then cannot shut down cleanly


def hdf5_write_failed() -> bool:
    """True after a failed shard write in this process (HDF5 may crash at exit: see cache/cli_errors.py)."""
    return bool(HDF5_WRITE_FAILED)


def mute_hdf5_dealloc_errors() -> None:
    """After a failed write every h5py object of that file reports it again when freed: drop those reports."""
    previous = sys.unraisablehook
    if getattr(previous, "mutes_hdf5", False):
        return

    def hook(unraisable) -> None:
        if "h5py" not in str(getattr(unraisable, "object", "")):
            previous(unraisable)

    hook.mutes_hdf5 = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def plain(obj: Any) -> Any:
    """JSON-normalise settings (tuples -> lists, numpy scalars -> Python), so they compare equal after a reload."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))


def jsonable(value: Any) -> Any:
    """One row-table cell as JSON: numpy scalars unwrapped, NaN -> null, containers recursed."""
    if isinstance(value, np.generic):
        value = value.item()
    if (isinstance(value, float) and not math.isfinite(value)) or type(value).__name__ in ("NAType", "NaTType"):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def default_producer(extra: Mapping[str, Any] | None) -> dict:
    try:
        version = metadata.version("mammosae-jax")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return plain({"package": "mammosae-jax", "version": version, "command": sys.argv, **(extra or {})})


def rows_table(rows: Any) -> dict:
    """A row table (DataFrame or mapping column -> list) as rows.json stores it: columns, dtypes, data."""
    columns = [str(c) for c in rows.columns] if hasattr(rows, "columns") else [str(c) for c in rows]
    if "image_index" not in columns:
        raise CacheInputError(f"the row table needs an 'image_index' column; it has {columns}")
    data, dtypes = {}, {}
    for c in columns:
        col = rows[c]
        dtypes[c] = str(getattr(col, "dtype", "object"))
        data[c] = jsonable(list(col.tolist() if hasattr(col, "tolist") else col))
    if any(not isinstance(v, int) or v < 0 for v in data["image_index"]):
        raise CacheInputError("image_index must hold non-negative integers")
    return {"columns": columns, "dtypes": dtypes, "data": data}


def check_room(folder: Path, open_file: Path | None, nbytes: int, n_complete: int) -> None:
    """CacheWriteError before HDF5 writes anything if the disk or the file size limit has no room for
    `nbytes` more (plus 1 MiB for the shard's small arrays): HDF5 cannot recover from a failed write."""
    need = nbytes + (1 << 20)
    fs = os.statvfs(folder)
    free = fs.f_bavail * fs.f_frsize
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = open_file.stat().st_size if open_file is not None else 0
    if free >= need and (limit == resource.RLIM_INFINITY or size + need <= limit):
        return
    why = f"{free} bytes free on its disk" if free < need else f"the file size limit (ulimit -f) is {limit} bytes"
    raise CacheWriteError(f"not enough room to write {folder}: the next batch needs about {need} bytes, {why}; "
                          f"the {n_complete} images in complete shards are kept: free space (or raise the limit) "
                          "and rerun the same command to resume")


def write_error(exc: BaseException, folder: Path, n_complete: int) -> BaseException:
    """A failed file write as CacheWriteError (saying how to resume); any other error unchanged."""
    if isinstance(exc, CacheError) or not isinstance(exc, (OSError, RuntimeError)):
        return exc
    mute_hdf5_dealloc_errors()
    found = re.search(r"error message = '([^']+)'", str(exc))
    reason = found.group(1) if found else os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
    return CacheWriteError(f"writing {folder} failed ({reason}); the {n_complete} images in complete shards are "
                           "kept: free space (or raise the file size limit) and rerun the same command to resume")
