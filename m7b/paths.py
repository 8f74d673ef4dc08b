"""Path safety: the one rule for a path that outside data names (a torrent's files, a manifest's, a zip's members,
a SHA256SUMS line). Such a path is joined to a folder m7b owns, so it must stay inside that folder.
"""

from __future__ import annotations

from m7b.errors import UnsafeError


def path_problem(path: object) -> str | None:
    """Why `path` (POSIX, relative to a folder) could land outside that folder; None when it cannot.

    Refused: anything but non-empty text, a NUL or a backslash, an absolute path, and the elements '', '.', '..'
    and a leading '~' (a home-folder shorthand for a shell).
    """
    if not isinstance(path, str):
        return f"is not text ({type(path).__name__})"
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "is absolute"
    for part in path.split("/"):
        if part in ("", ".", "..") or part.startswith("~"):
            return f"has the path element {part!r}"
    return None


def safe_relative_path(path: str, what: str, folder: str = "its folder") -> str:
    """`path` unchanged when it stays inside `folder`; else UnsafeError naming `what` and the element at fault."""
    problem = path_problem(path)
    if problem is not None:
        raise UnsafeError(
            f"{what} {path!r} {problem}: it could escape {folder}, so it was refused and nothing was written"
        )
    return path


def safe_name(name: str, what: str, folder: str = "its folder") -> str:
    """One path element (a folder or file name), by the same rule."""
    if isinstance(name, str) and "/" in name:
        raise UnsafeError(
            f"{what} {name!r} is not a plain name (it holds '/'): it could escape {folder}, so it was refused "
            "and nothing was written"
        )
    return safe_relative_path(name, what, folder)
