"""Error types of the feature cache. Every message says what to do about it."""
from __future__ import annotations


class CacheError(Exception):
    """Base class of every error raised by `cache`."""


class CacheNotFoundError(CacheError):
    """The folder has no manifest (not a cache, or rank manifests that were never merged)."""


class CacheVersionError(CacheError):
    """The manifest's format version is unknown or newer than this code understands."""


class CacheIncompleteError(CacheError):
    """The cache is still being written, or its writer stopped before `close()`."""


class CacheMissingShardError(CacheError):
    """A shard listed in the manifest is not on disk."""


class CacheChecksumError(CacheError):
    """A file or array does not match the size or sha256 recorded in the manifest."""


class CacheDamagedError(CacheError):
    """The manifest or a shard is structurally broken (a field missing, counts that do not add up)."""


class CacheNonFiniteError(CacheError):
    """Stored features contain NaN or Inf."""


class CacheSettingsError(CacheError):
    """A writer was reopened with settings that differ from the existing cache."""


class CacheBusyError(CacheError):
    """Another live process holds the write lock of this cache (or rank)."""


class CacheWriteError(CacheError, OSError):
    """Writing the cache failed (disk full, file size limit, I/O error); the complete shards resume."""


class CacheInputError(CacheError, ValueError):
    """Arguments given to the writer or reader have the wrong shape, type or value."""
