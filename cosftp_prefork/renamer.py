"""Renaming a directory. COS has no rename: copy every key, then delete the originals.

The originals are deleted only after every copy succeeded; if any copy fails, the copies
already made are removed again and the directory stays where it was.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, wait

from .listing import all_keys
from .storage import Bucket

log = logging.getLogger(__name__)

DELETE_BATCH = 1000  # the most keys COS deletes in one request


def rename_directory(bucket: Bucket, src_prefix: str, dst_prefix: str, executor: Executor,
                     log_context: str) -> int:
    """Move every key under ``src_prefix`` to ``dst_prefix``; return how many moved.

    Raises ``StorageError`` (the first failure) with the source untouched if a copy fails.
    """
    keys = all_keys(bucket, src_prefix)
    targets = [dst_prefix + key[len(src_prefix):] for key in keys]
    futures = [executor.submit(bucket.copy, key, target) for key, target in zip(keys, targets)]
    wait(futures)
    failures = [future.exception() for future in futures if future.exception() is not None]
    if failures:
        copied = [t for future, t in zip(futures, targets) if future.exception() is None]
        log.error("%s: renaming %s failed after %d of %d copies; removing the copies: %s",
                  log_context, src_prefix, len(copied), len(keys), failures[0])
        delete_keys(bucket, copied)
        raise failures[0]
    delete_keys(bucket, keys)
    log.info("%s: renamed %s to %s (%d keys)", log_context, src_prefix, dst_prefix, len(keys))
    return len(keys)


def delete_keys(bucket: Bucket, keys: list[str]) -> None:
    """Delete ``keys`` in batches of ``DELETE_BATCH``; raises ``StorageError``."""
    for start in range(0, len(keys), DELETE_BATCH):
        bucket.delete_many(keys[start:start + DELETE_BATCH])
