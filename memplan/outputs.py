"""Output files: check where they go before the work, write them all only after it succeeded.

A run that fails must not leave a mix of new and stale files behind: the CLI
and the pass manager render every output in memory first, check the folder
up front (:func:`check_output_dir`), and write with :func:`write_files`,
which removes what it wrote if any write fails.
"""
from __future__ import annotations

import os
from pathlib import Path

from memplan.errors import OutputPathError


def check_output_dir(directory: Path, what: str = "output directory") -> None:
    """Raise :class:`OutputPathError` unless ``directory`` is a folder memplan can write into or create."""
    if directory.exists():
        if not directory.is_dir():
            raise OutputPathError(f"{what} {str(directory)!r} is an existing file, not a folder")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {str(directory)!r} is not writable")
        return
    parent = directory.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what} {str(directory)!r} cannot be created: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {str(directory)!r} cannot be created: {str(parent)!r} is not writable")


def write_files(directory: Path, files: dict[str, str | bytes]) -> list[Path]:
    """Write ``{relative file name: text or bytes}`` under ``directory`` (folders created as needed)
    and return the paths.

    Each file is first written under a temporary name beside its target, and the targets are
    replaced only when every file was written; on a failure the temporary files and the folders
    this call created are removed, earlier files stay as they were, and
    :class:`OutputPathError` names the file at fault.
    """
    created: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    target = directory
    try:
        for name, data in files.items():
            target = directory / name
            _make_dirs(target.parent, created)
            if target.is_dir():
                raise IsADirectoryError(21, "a folder is in the way", str(target))
            temporary = target.with_name(f".{target.name}.memplan-tmp")
            staged.append((temporary, target))
            if isinstance(data, bytes):
                temporary.write_bytes(data)
            else:
                temporary.write_text(data, encoding="utf-8")
        for temporary, target in staged:
            os.replace(temporary, target)
    except OSError as exc:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise OutputPathError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from None
    return [t for _, t in staged]


def _make_dirs(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, appending each folder it creates (outermost first) to ``created``."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)
