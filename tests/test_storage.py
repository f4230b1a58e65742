"""The storage layer on the emulator: what the SDK's answers become."""

from __future__ import annotations

import os
import uuid

import pytest

from cosftp_prefork.cos.bucket import Bucket
from cosftp_prefork.errors import StorageError

from .conftest import ALPHA

MIB = 1024 * 1024


def test_a_part_copy_of_a_replaced_object_says_so(emulator, cos):
    bucket = Bucket(cos, ALPHA, emulator.region)
    source, target = f"storage-{uuid.uuid4().hex}", f"storage-{uuid.uuid4().hex}"
    bucket.put(source, os.urandom(MIB))
    seen = bucket.head(source)
    upload_id = bucket.create_multipart(target)
    try:
        assert bucket.upload_part_copy(target, upload_id, 1, seen, 0, MIB - 1)
        bucket.put(source, os.urandom(MIB))
        with pytest.raises(StorageError, match=f"{source} was replaced while it was being "
                                               "copied; nothing was changed") as info:
            bucket.upload_part_copy(target, upload_id, 2, seen, 0, MIB - 1)
        assert info.value.code == "ObjectChanged"
    finally:
        bucket.abort_multipart(target, upload_id)
