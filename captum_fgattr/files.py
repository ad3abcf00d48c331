"""File-system conventions for files the library writes: all-or-nothing writes, permissions from the umask."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def new_file_mode() -> int:
    """Permission bits ``open()`` gives a new file under the process umask (0o666 & ~umask).

    Tools that write through a private temporary file (``tempfile.mkstemp``, safetensors' ``save_file``)
    create it 0o600; ``os.chmod(path, new_file_mode())`` restores what the user's umask asks for.
    """
    try:  # Linux: read the umask without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: briefly the strictest mask (never a looser one), then restore
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a private temporary file in the same folder, which
    then gets the umask's permissions and is renamed over ``path`` (atomic on one file system). A failed
    ``write`` leaves ``path`` as it was and no temporary file behind. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
