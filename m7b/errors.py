"""One exception hierarchy; each class carries the exit code the CLI returns for it.

Messages say what was expected, what was found, and what to do next.
"""

from __future__ import annotations


class M7bError(Exception):
    """Base of every error m7b reports to a user.

    Keyword arguments are data a caller can act on (e.g. `field="max_tokens"`, the parameter that is wrong);
    they are kept in `data`, and the CLI adds them to its JSON error document and words fields as its flags.
    """

    exit_code: int = 1

    def __init__(self, message: str = "", **data: object) -> None:
        super().__init__(message)
        self.data: dict[str, object] = data


class NotFoundError(M7bError):
    """An unknown release name, a missing file or folder."""

    exit_code = 3


class InvalidInputError(M7bError):
    """Input that does not parse or has the wrong shape: a manifest, params.json, a magnet, an option."""

    exit_code = 4


class UnsupportedArchitectureError(InvalidInputError):
    """A well-formed release that a command cannot yet carry to the output asked for (a GGUF of a mixture of
    experts): exit 4, as for any input a command does not accept; nothing in it differs from what its publisher
    said, so it is no mismatch."""


class MismatchError(M7bError):
    """Data that parses but differs from what its magnet, torrent or manifest says."""

    exit_code = 5


class UnvouchedError(MismatchError):
    """Data nothing vouches for: a converted folder m7b keeps no record of converting (copied from elsewhere), whose
    own SHA256SUMS was written by whoever made it. Exit 5, as a mismatch: a script must not use it as verified;
    verify's verdict `unvouched` (not `mismatch`) tells an honest copy from a changed one."""


class UnsafeError(M7bError):
    """Input that would run code or write outside its folder if used: a hostile pickle, an escaping path."""

    exit_code = 6


class NetworkError(M7bError):
    """No peers, no metadata, a timeout on the swarm."""

    exit_code = 7


class StorageError(M7bError):
    """The disk refused: an output that exists, a full disk, a permission error."""

    exit_code = 8


EXIT_OK = 0
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: rerun with --debug and report the traceback)",
    2: "usage error (unknown option, missing argument)",
    NotFoundError.exit_code: "not found: unknown release name, missing file or folder",
    InvalidInputError.exit_code: "invalid input: a manifest, params.json, magnet or option that does not parse",
    MismatchError.exit_code: "mismatch: data differs from its magnet, torrent or manifest (or, verdict "
    "`unvouched`, nothing m7b recorded vouches for it)",
    UnsafeError.exit_code: "unsafe: refused input that would execute code or escape its folder",
    NetworkError.exit_code: "network: no peers or metadata within the timeout",
    StorageError.exit_code: "storage: output exists, disk full, or permission denied",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGTERM): temporary files removed, resumable state saved",
    EXIT_BROKEN_PIPE: "the reader of stdout went away (e.g. `| head`): the output stopped there, quietly",
}
