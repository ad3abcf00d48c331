"""File-system conventions for files the library writes: permissions follow the user's umask."""
from __future__ import annotations

import os
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
