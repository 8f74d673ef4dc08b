"""Path safety: the one rule for a path that outside data names (a torrent's files, a manifest's, a zip's members,
a SHA256SUMS line). Such a path is joined to a folder m7b owns, so it must stay inside that folder.
"""

from __future__ import annotations

from m7b.errors import InvalidInputError, UnsafeError

# What Linux (and macOS) file systems hold: a path element of at most 255 bytes, a path of at most 4,096
# (ENAMETOOLONG beyond). The one rule for a name that is too long, whoever typed it.
NAME_MAX = 255
PATH_MAX = 4096


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


def length_problem(path: object) -> str | None:
    """Why the file system would refuse `path` for its length (ENAMETOOLONG); None when it would not. Bytes are
    counted as the file system counts them (UTF-8, undecodable bytes as they were)."""
    text = str(path)
    data = text.encode("utf-8", "surrogateescape")
    if len(data) > PATH_MAX:
        return f"is {len(data):,} bytes long, over the {PATH_MAX:,} a path may have"
    longest = max(data.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"has an element of {len(longest):,} bytes, over the {NAME_MAX} a file or folder name may have"
    return None


def shown_path(path: object, limit: int = 80) -> str:
    """`path` for a message: whole when short, else its start and end around an ellipsis."""
    text = str(path)
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 4 :]}"


def too_long_error(path: object, what: str = "the path") -> InvalidInputError:
    """The refusal of a path the file system cannot hold (ENAMETOOLONG), naming it and what to do."""
    problem = length_problem(path) or "is too long for the file system"
    return InvalidInputError(
        f"{what} {shown_path(path)} {problem}: no file or folder can have that name; give a shorter one",
        path=str(path),
    )


def check_path_length(path: object, what: str) -> None:
    """InvalidInputError (exit 4) when the file system would refuse `path` (a path a user typed: an argument,
    --dest, --out, M7B_HOME) for its length."""
    if length_problem(path) is not None:
        raise too_long_error(path, what)
