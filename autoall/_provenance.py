"""Which code produced a result: autoall's version, the git commit, a digest of the sources.

The report keys its cached runs by these (with torch's version), so a run trained by other code
is never read back as if the current code had trained it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import autoall

_PACKAGE = Path(__file__).resolve().parent


def git_commit() -> str | None:
    """The checkout's commit when autoall runs from a git work tree (read from .git, no subprocess)."""
    root = _PACKAGE.parent / ".git"
    try:
        head = (root / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = root / ref
            if loose.is_file():
                return loose.read_text().strip()
            for line in (root / "packed-refs").read_text().splitlines():
                if line.endswith(f" {ref}"):
                    return line.split()[0]
            return None
        return head
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 (first 16 hex digits) of every .py file of the package: changes with any edit,
    committed or not."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(_PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_version() -> dict[str, str | None]:
    """autoall's version, the git commit (None outside a checkout), the source digest, torch's."""
    import torch

    return {
        "autoall": autoall.__version__,
        "git_commit": git_commit(),
        "source": source_digest(),
        "torch": torch.__version__,
    }
