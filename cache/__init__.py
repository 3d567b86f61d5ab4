"""Versioned, sharded, resumable HDF5 feature cache (format: cache/README.md). numpy + h5py only."""
from .errors import (CacheBusyError, CacheChecksumError, CacheDamagedError, CacheError, CacheIncompleteError,
                     CacheInputError, CacheMissingShardError, CacheNonFiniteError, CacheNotFoundError,
                     CacheSettingsError, CacheVersionError, CacheWriteError)
from .format import FORMAT_VERSION, rank_block
from .head import Head
from .lock import FolderBusyError, FolderLock
from .merge import merge_ranks
from .reader import FeatureCache, VerifyResult, open_cache
from .tokens import TokenBatch, TokenStream
from .writer import CacheWriter

__all__ = [
    "FORMAT_VERSION", "CacheWriter", "open_cache", "FeatureCache", "TokenBatch", "TokenStream", "Head",
    "VerifyResult", "merge_ranks", "rank_block", "FolderLock", "FolderBusyError",
    "CacheError", "CacheNotFoundError", "CacheVersionError", "CacheIncompleteError", "CacheMissingShardError",
    "CacheChecksumError", "CacheDamagedError", "CacheNonFiniteError", "CacheSettingsError", "CacheBusyError",
    "CacheInputError", "CacheWriteError",
]
