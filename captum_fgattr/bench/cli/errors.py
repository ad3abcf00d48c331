"""The ``fgattr`` CLI's one error path: bad input and environment failures as one line naming the problem and
the way out.

:func:`user_error` recognises failures that are not bugs of this package — bad input (:data:`INPUT_ERRORS`: the
package's own messages), a results store that cannot be used, file-system errors (permissions, a regular file
where a folder is needed, a folder where a file is needed, a full or read-only disk), and a CUDA device asked for
on a machine without one — and describes them; anything else is a bug and keeps its traceback. (Device strings
are checked where each command reads them: ``loading.check_device``.)
"""
from __future__ import annotations

import errno
import sqlite3

import torch

from captum_fgattr.bench.store import StoreError

__all__ = ["INPUT_ERRORS", "user_error"]

#: what this package raises for bad input (arguments, configuration, files, data): shown as their message
INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ConnectionError)

_OS_ADVICE: dict[int, str] = {
    errno.EACCES: "check its permissions, or choose a path you may use (--run-dir, --output, $FGATTR_CACHE)",
    errno.EPERM: "check its permissions, or choose a path you may use (--run-dir, --output, $FGATTR_CACHE)",
    errno.EROFS: "the file system is read-only; choose a writable path (--run-dir, --output, $FGATTR_CACHE)",
    errno.ENOTDIR: "a part of the path is a regular file, not a folder; choose another path",
    errno.EEXIST: "a file of that name is in the way; move it, or choose another path",
    errno.EISDIR: "a folder is where a file is expected; move it away, or choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another path",
    errno.ENOENT: "it does not exist; check the path",
}


def _os_error(err: OSError) -> str:
    target = f" {err.filename}" if err.filename is not None else ""
    advice = _OS_ADVICE.get(err.errno or -1)
    reason = err.strerror or str(err).splitlines()[0]
    return f"{reason}:{target}" + (f"; {advice}" if advice else "")


def _cuda_unavailable(err: BaseException) -> bool:
    """Whether ``err`` is torch refusing a CUDA device on a machine without a usable one."""
    text = str(err).lower()
    return not torch.cuda.is_available() and any(s in text for s in ("cuda", "nvidia driver"))


def user_error(err: BaseException) -> str | None:
    """One line describing ``err`` and the way out, or None when it is not an environment failure."""
    if isinstance(err, StoreError):
        return str(err)
    if isinstance(err, OSError) and err.errno is not None:  # from the operating system
        return _os_error(err)
    if isinstance(err, sqlite3.Error):
        return f"results store: {str(err).splitlines()[0]}; check the run folder's results.sqlite or use another --run-dir"
    if isinstance(err, (RuntimeError, AssertionError)) and _cuda_unavailable(err):
        return ("a CUDA device was asked for (--device cuda or evaluation.device), but no CUDA GPU is usable here "
                f"({str(err).splitlines()[0]}); use --device cpu")
    if isinstance(err, INPUT_ERRORS):
        return str(err)
    return None
