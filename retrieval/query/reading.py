"""One failure to read an index file, whatever raised it, as one IndexFolderError line naming the file."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ..errors import IndexFolderError


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn any failure to read ``path`` into one IndexFolderError line naming the file."""
    try:
        yield
    except IndexFolderError:
        raise
    except Exception as e:  # numpy, faiss and pyarrow each raise their own kinds
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        raise IndexFolderError(f"{path} is unreadable ({type(e).__name__}: {msg}); "
                               f"run `retrieval verify` on the index folder") from None
