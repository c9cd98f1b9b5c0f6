"""Writing files and directories so that a reader never sees them half-written, even after a SIGKILL.

A file is written to a temporary sibling and renamed over the old one (`write_text_atomic`). A directory
(a checkpoint, an adapter) is built whole in a temporary sibling, then `atomic_dir_replace` moves the old
one aside and the new one into place; a process killed between those two renames leaves no `final` but
the complete old directory under `<name>.old-*`, which `recover_dir` (called by every reader that
resumes from such a directory) renames back.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write `obj` as indented JSON to `path` through a temporary sibling and one rename."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def atomic_dir_replace(tmp: Path, final: Path) -> None:
    """Move a finished directory `tmp` to `final`, replacing what is there without a window where
    `final` is missing or partial for a reader that calls `recover_dir` first."""
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for stale in final.parent.glob(f"{final.name}.old-*"):  # (left by a writer killed while deleting it)
        shutil.rmtree(stale, ignore_errors=True)


def set_aside(final: str | os.PathLike) -> Path | None:
    """The complete directory a writer killed between the two renames of `atomic_dir_replace` left as
    `<name>.old-*` while `final` is missing (the newest, if several), or None. For readers: read it in place."""
    final = Path(final)
    if final.exists():
        return None
    olds = sorted(final.parent.glob(f"{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return olds[-1] if olds else None


def recover_dir(final: str | os.PathLike) -> bool:
    """For the writer of `final` only (a resumed run; nobody else may be writing it): put back the directory
    set aside by a killed `atomic_dir_replace` and remove leftover temporary directories (`.<name>.tmp-*`,
    incomplete by construction). Returns whether a set-aside directory was put back."""
    final = Path(final)
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    old = set_aside(final)
    if old is not None:
        os.replace(old, final)
    for stale in final.parent.glob(f"{final.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return old is not None
