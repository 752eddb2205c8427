"""Files that appear whole: written under a hidden temporary name beside their final one, then
renamed, so a reader never sees half a file (readers skip names starting with '.').

Standard library only: the run folder's records and the stores of every stage write through it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` if the block succeeds.

    A full disk, however the writer reports it, becomes ``OSError(ENOSPC)`` naming ``final``;
    the half-written temporary file is removed either way.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    except Exception as err:
        if _disk_full(err):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _disk_full(err: BaseException) -> bool:
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) \
        or "No space left on device" in str(err)
