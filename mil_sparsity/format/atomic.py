"""Write a file or package directory atomically: all of it appears at its path, or nothing does.

Usage::

    with atomic_output("out/model.mlpackage", overwrite=False) as staging:
        mlmodel.save(staging)        # write anything at ``staging`` (a file or a directory)
    # here out/model.mlpackage exists and is complete

How it works:

1. A temporary directory ``.NAME.tmp-XXXXXXXX`` is created next to the destination (same parent,
   hence same filesystem). The caller writes at ``staging`` = that directory + ``/NAME``: the
   staged path keeps the destination's own name, so writers that check the extension (such as
   ``MLModel.save``, which wants ``.mlpackage``) accept it.
2. When the ``with`` body returns, the staged path is renamed to the destination (one
   ``os.rename`` on the same filesystem). With ``overwrite=True`` an existing destination is first
   renamed into the temporary directory, and deleted only after the new one is in place; if the
   final rename fails, the old destination is moved back.
3. If the body raises (including ``KeyboardInterrupt``), or the rename fails, the temporary
   directory and everything in it are removed and the destination is left exactly as it was.

An interrupted process (``SIGKILL``, power loss) can leave the hidden ``.NAME.tmp-*`` directory
behind, never a half-written destination. Replacing takes two renames (old aside, new in); a
kill exactly between them leaves no destination and the old one intact in
``.NAME.tmp-*/NAME.old`` (POSIX has no portable atomic swap of two directories).

Without ``overwrite``, an existing destination raises :class:`FileExistsError` before anything
is written; it is checked again just before the rename (another process may have created it
meanwhile), because ``os.rename`` would silently replace an empty directory on POSIX.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Union

from mil_sparsity.errors import InvalidInputError

PathLike = Union[str, "os.PathLike[str]"]


def check_destination(destination: PathLike, overwrite: bool) -> str:
    """The destination as an absolute path, after the checks done before any writing.

    Raises FileExistsError if it exists and ``overwrite`` is false, FileNotFoundError if its
    parent directory does not exist, ValueError if it has no name (``/``).
    """
    path = os.path.abspath(os.fspath(destination))
    name = os.path.basename(path)
    if not name:
        raise InvalidInputError(f"not a valid output path: {os.fspath(destination)!r}")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output directory does not exist: {parent}")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists")
    return path


@contextlib.contextmanager
def atomic_output(destination: PathLike, *, overwrite: bool = False) -> Iterator[str]:
    """Yield a staging path; move it to ``destination`` when the block succeeds (see module doc)."""
    path = check_destination(destination, overwrite)
    parent, name = os.path.split(path)
    workdir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    staging = os.path.join(workdir, name)
    try:
        yield staging
        if not os.path.lexists(staging):
            raise FileNotFoundError(f"nothing was written at the staging path {staging}")
        old = None
        if os.path.lexists(path):
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = os.path.join(workdir, f"{name}.old")
            os.rename(path, old)
        try:
            os.rename(staging, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
    finally:
        # the new output has been renamed away (on success); what remains is the old
        # destination (if replaced) or the partial output (on failure)
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["atomic_output", "check_destination"]
