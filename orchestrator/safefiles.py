"""Safe file operations inside a results folder (DIR): the one place that writes, moves,
locks, truncates or removes what sgsweep keeps there.

A results folder is often shared (a cluster's scratch, a team's folder) while sgsweep may
run as root. Whoever can write DIR could plant `DIR/.lock -> /etc/passwd` (or a link at
any other name sgsweep writes) and turn the next command against its user. So, inside DIR:

* every folder on the way is opened with `O_NOFOLLOW | O_DIRECTORY`, one component at a
  time from DIR's own descriptor, and the operation is done relative to that descriptor
  (`dir_fd`): a link swapped in after a check is not followed either;
* a file is written to a new temporary name in its real folder (`O_CREAT | O_EXCL |
  O_NOFOLLOW`), synced, and renamed over its name (a rename replaces a name, it never
  writes through a link); a name that is a symbolic link or not a regular file is refused;
* a file changed in place (the lock, a journal cut back after a kill) is opened with
  `O_NOFOLLOW` and must be a regular file with no other hard link;
* a path handed to a library that opens it itself (MLflow's SQLite store, Optuna's
  journal, report files MLflow copies) is checked component by component first (`check`).

DIR itself may be a symbolic link: it is the path the user named (`--out`), and a link to
a scratch or project disk is a common, legitimate layout. Everything below it is not
followed. Each refusal is one `UnsafePath` line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from orchestrator.errors import RunError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_PREFIX = ".tmp-"  # temporary names: hidden from pyarrow, removed by the next run


class UnsafePath(RunError):
    """An entry of DIR is not what sgsweep made (a symbolic link, a hard-linked file, a
    file where a folder belongs); the message is one line naming it."""


def refuse(path: Path, what: str) -> UnsafePath:
    return UnsafePath(f"{path}: {what}; sgsweep follows no links inside its results folder "
                      "and never writes through one: remove it (or choose another --out)")


def _describe(path: Path, st: os.stat_result, want_dir: bool) -> str:
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"is a symbolic link (to {os.readlink(path)})"
        except OSError:
            return "is a symbolic link"
    if want_dir:
        return "is not a folder"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return f"has {st.st_nlink} hard links (sgsweep's files have one)"


def relative_parts(root: Path, path: Path | str) -> list[str]:
    """`path` (an ordinary path: absolute, or relative to the working folder, e.g. built
    as `root / "trials"`) as its components below `root`; outside root is refused."""
    try:
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise refuse(Path(path), f"is outside the results folder {root}") from None
    if not relative.parts:
        raise refuse(Path(path), "is the results folder itself, not an entry in it")
    return list(relative.parts)


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """OSErrors of `dir_fd` calls (which name only the last component) name `path`."""
    try:
        yield
    except UnsafePath:
        raise
    except OSError as exc:
        if exc.filename is not None and str(exc.filename) == str(path):
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _open_child_dir(parent_fd: int, name: str, path: Path, create: bool) -> int | None:
    """The real folder `name` under `parent_fd` (made if `create`), None if missing."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=parent_fd)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        raise refuse(path, _describe(path, st, want_dir=True)) from None


def open_root(root: Path, create: bool = True) -> int:
    """DIR's descriptor (DIR itself may be a link: the user named it)."""
    with _named(root):
        if create:
            root.mkdir(parents=True, exist_ok=True)
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def folder(root: Path, path: Path | str | None = None,
           create: bool = True) -> contextlib.AbstractContextManager[int | None]:
    """A descriptor of DIR's real subfolder `path` (DIR itself if None), every component
    checked to be a folder and not a link; made if `create`, else None if missing."""
    return _folder(Path(root), [] if path is None else relative_parts(root, path), create)


@contextmanager
def _folder(root: Path, parts: list[str], create: bool = True) -> Iterator[int | None]:
    try:
        fd: int | None = open_root(root, create)
    except FileNotFoundError:
        if create:
            raise
        fd = None
    path = root
    try:
        for name in parts if fd is not None else ():
            path = path / name
            with _named(path):
                child = _open_child_dir(fd, name, path, create)
            os.close(fd)
            fd = child
            if fd is None:
                break
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _entry(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _check_replaceable(dir_fd: int, name: str, path: Path) -> None:
    """`name` may be replaced by a new file: missing, or a regular file."""
    st = _entry(dir_fd, name)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise refuse(path, _describe(path, st, want_dir=False))


@contextmanager
def atomic_file(root: Path, path: Path | str, mode: str = "wb") -> Iterator[IO]:
    """Write DIR's file `path` whole or not at all: a new temporary file in its real
    folder, synced and renamed over the name (never written through a link)."""
    root = Path(root)
    parts = relative_parts(root, path)
    full = root.joinpath(*parts)
    with _folder(root, parts[:-1]) as dir_fd:
        name = parts[-1]
        _check_replaceable(dir_fd, name, full)
        tmp = f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        with _named(full):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, mode) as handle:
                yield handle
                with _named(full):
                    handle.flush()
                    os.fsync(handle.fileno())
            with _named(full):
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                os.fsync(dir_fd)
        except BaseException:
            with _named(full), contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise


def write_bytes(root: Path, path: Path | str, data: bytes) -> None:
    with atomic_file(root, path) as handle:
        handle.write(data)


def write_text(root: Path, path: Path | str, text: str) -> None:
    write_bytes(root, path, text.encode())


def open_in_place(root: Path, path: Path | str, create: bool = False) -> int:
    """A descriptor (read-write) of DIR's file `path`, to change in place (a lock, a
    journal cut back): opened without following a link, a regular file with no other
    hard link. The caller closes it."""
    root = Path(root)
    parts = relative_parts(root, path)
    full = root.joinpath(*parts)
    with _folder(root, parts[:-1]) as dir_fd:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(parts[-1], flags, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise OSError(exc.errno, exc.strerror, str(full)) from None
            raise refuse(full, _describe(full, _entry(dir_fd, parts[-1]), False)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise refuse(full, _describe(full, st, want_dir=False))
    return fd


def remove(root: Path, path: Path | str) -> bool:
    """Remove DIR's entry `path` (a link is removed, never followed); False if missing."""
    root = Path(root)
    parts = relative_parts(root, path)
    with _folder(root, parts[:-1], create=False) as dir_fd:
        if dir_fd is None:
            return False
        try:
            with _named(root.joinpath(*parts)):
                os.unlink(parts[-1], dir_fd=dir_fd)
        except FileNotFoundError:
            return False
    return True


def move_aside(root: Path, source: Path | str, target: Path | str) -> Path:
    """Move DIR's entry `source` to `target` in DIR (both folders real, made if missing),
    under a fresh name if `target` exists; returns where it went."""
    root = Path(root)
    src, dst = relative_parts(root, source), relative_parts(root, target)
    with _folder(root, src[:-1], create=False) as src_fd, \
            _folder(root, dst[:-1]) as dst_fd:
        name = dst[-1]
        if src_fd is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", str(root.joinpath(*src)))
        if _entry(dst_fd, name) is not None:
            stem, dot, suffix = name.partition(".")
            name = f"{stem}-{uuid.uuid4().hex[:8]}{dot}{suffix}"
        with _named(root.joinpath(*src)):
            os.rename(src[-1], name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            os.fsync(dst_fd)
    return root.joinpath(*dst[:-1], name)


@contextmanager
def staged_folder(root: Path, target: Path | str) -> Iterator[Path]:
    """A fresh private folder (mode 700, beside `target`) for a library that writes plain
    files by path (pandas, matplotlib): nothing can be planted in a folder made just now.
    On success each file in it is renamed into DIR's real folder `target` (made if
    missing), replacing a regular file of that name and refusing a link; the staging
    folder is removed either way. Returned paths are mapped with `target / p.name`."""
    root = Path(root)
    parts = relative_parts(root, target)
    full = root.joinpath(*parts)
    with folder(root, full):
        pass  # DIR's target folder, real (made if missing) before anything is written
    with _folder(root, parts[:-1]) as parent_fd:
        name = f"{TMP_PREFIX}{parts[-1]}-{uuid.uuid4().hex[:8]}"
        with _named(full.parent / name):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
    staging = full.parent / name
    try:
        yield staging
        with folder(root, staging) as staging_fd, folder(root, full) as target_fd:
            for entry in sorted(os.listdir(staging_fd)):
                st = os.stat(entry, dir_fd=staging_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    continue
                _check_replaceable(target_fd, entry, full / entry)
                with _named(full / entry):
                    os.replace(entry, entry, src_dir_fd=staging_fd, dst_dir_fd=target_fd)
            os.fsync(target_fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # fd-based: follows no link inside


def check(root: Path, path: Path | str, kind: str = "file", in_place: bool = True) -> bool:
    """Before a library opens DIR's `path` itself: every folder on the way a real folder
    (not a link), and `path` missing or a real `kind` ("file": regular, and with one hard
    link if it is written `in_place`; "dir": a folder). True if it exists. A link swapped
    in after the check is not caught here: the libraries sgsweep hands paths to are the
    one place that remains."""
    root = Path(root)
    parts = relative_parts(root, path)
    full = root.joinpath(*parts)
    with _folder(root, parts[:-1], create=False) as dir_fd:
        if dir_fd is None:
            return False
        st = _entry(dir_fd, parts[-1])
    if st is None:
        return False
    if kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            raise refuse(full, _describe(full, st, want_dir=True))
    elif not stat.S_ISREG(st.st_mode) or (in_place and st.st_nlink != 1):
        raise refuse(full, _describe(full, st, want_dir=False))
    return True


def is_link(path: Path) -> bool:
    """`path` is a symbolic link (lstat; False if missing)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False
