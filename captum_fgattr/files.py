"""File-system conventions for files the library writes: all-or-nothing writes, permissions from the umask; and
the content digests (sha256, cached by size / mtime / inode) that tell whether an input file changed."""
from __future__ import annotations

import hashlib
import json
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_key(stat: os.stat_result) -> list[int]:
    """What says a file is unchanged since it was hashed: size, modification time (ns) and inode."""
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def content_sha256(path: str | os.PathLike[str], cache_file: str | os.PathLike[str] | None = None) -> str:
    """Hex sha256 of a file's bytes, or of a folder's visible files (every ``relative/path digest`` line, sorted
    by path), so the same contents give the same digest wherever they lie.

    ``cache_file``: a JSON file remembering each file's digest with its size, mtime (ns) and inode; a file
    whose three are unchanged is not read again (e.g. a resumed run does not rehash gigabytes of weights).
    The cache is rewritten (atomically) only when a digest was computed; an unreadable or unwritable cache is
    ignored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; cannot fingerprint its contents")
    cache_path = Path(cache_file) if cache_file is not None else None
    try:
        cache = json.loads(cache_path.read_text()) if cache_path is not None and cache_path.is_file() else {}
    except (OSError, ValueError):  # an unreadable cache is only a cache: hash again
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    changed = False

    def file_digest(file: Path) -> str:
        nonlocal changed
        key, entry = str(file), cache.get(str(file))
        stamp = _file_key(file.stat())
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
        cache[key] = {"stamp": stamp, "sha256": sha256_file(file)}
        changed = True
        return cache[key]["sha256"]

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        lines = "".join(f"{p.relative_to(path).as_posix()} {file_digest(p)}\n" for p in files)
        result = hashlib.sha256(lines.encode()).hexdigest()
    else:
        result = file_digest(path)
    if changed and cache_path is not None:
        text = json.dumps(cache, indent=1, sort_keys=True) + "\n"
        try:
            atomic_write(cache_path, lambda tmp: tmp.write_text(text))
        except OSError:  # an unwritable cache only costs the next call a rehash
            pass
    return result
