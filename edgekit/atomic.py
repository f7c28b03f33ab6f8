"""Write files so that a failure never leaves a partial output behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import DiskFull, OutputExists


def check_writable(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless ``force``."""
    if path.exists() and not force:
        raise OutputExists(f"{path} already exists", "Pass --force (force=True) to overwrite it.")


def check_free_space(directory: Path, needed: int) -> None:
    """Raise :class:`DiskFull` unless ``directory`` has room for ``needed`` bytes plus a margin."""
    free = shutil.disk_usage(directory).free
    margin = 64 << 20
    if free < needed + margin:
        raise DiskFull(
            f"{directory} has {free / 2**20:.0f} MiB free but the output needs about {needed / 2**20:.0f} MiB",
            "Free some space or choose another output directory with -o.",
        )


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Any exception, Ctrl-C included, removes the temporary file. A full disk
    (ENOSPC) becomes :class:`DiskFull`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"the disk filled up while writing {path.name}", "Free some space and run it again.") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def output_directory(directory: Path) -> Iterator[Path]:
    """Create ``directory`` (with missing parents) for the block's outputs. If the block fails, the
    directories it created are removed again while empty, so a refused conversion leaves nothing behind."""
    directory = Path(directory)
    created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield directory
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:  # not empty (someone else's file), or already gone
                break
        raise


@contextlib.contextmanager
def scratch_file(directory: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file in ``directory`` that is removed whatever happens."""
    fd, name = tempfile.mkstemp(prefix=".edgekit-", suffix=suffix, dir=directory)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"the disk filled up in {directory}", "Free some space and run it again.") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block succeeds.

    Any exception, Ctrl-C included, removes the temporary directory, so readers
    never see a half-written ``path``. A full disk (ENOSPC) becomes :class:`DiskFull`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        shutil.rmtree(path, ignore_errors=True)  # only ever an incomplete or stale leftover
        tmp.rename(path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(f"the disk filled up while writing {path.name}", "Free some space and run it again.") from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
