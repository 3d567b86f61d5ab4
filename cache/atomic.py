"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial write.

The one place both halves (extract/, mammosae_jax/) write files from: bytes, text, JSON, CSV and
figures. Standard library only (a figure is anything with matplotlib's ``savefig``).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (parent folder created); fsync it and move it onto
    ``path`` only if the block succeeds. The temporary file is removed whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; honour the umask
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:  # data on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, no newline translation beyond the platform's) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **json_kwargs)`` to ``path`` atomically (no trailing newline added)."""
    write_text_atomic(path, json.dumps(obj, **json_kwargs))


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` via the fixed temporary ``<name>.tmp`` (fsynced, renamed, folder fsynced).

    The fixed name lets a resuming writer recognise an interrupted write's leftover (the cache does).
    """
    write_chunks_atomic(path, [data])


def write_chunks_atomic(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> None:
    """`write_bytes_atomic` of the concatenated ``chunks``, written one after the other.

    The file gets the permissions of any new file (0666 less the umask), like ``atomic_path``'s.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_current_umask())  # a leftover .tmp of another user's mode is not inherited
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_csv_atomic(path: str | os.PathLike, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV (``csv`` module defaults, header first) atomically."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_figure_atomic(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` atomically; the format comes from the suffix of ``path``."""
    savefig_kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
