"""`m7b rm`: remove a release from the store, never one that is being seeded or written.

The release's lock is taken exclusively without waiting (a seed holds it shared, a fetch exclusively: either way
LockHeldError naming the holder, nothing removed), and so are the locks of its converted outputs (a convert
writing one). The parts are removed while the locks are held, trust first: the report and the completion record
go before the files they vouch for, so an interrupted removal never leaves a half-removed folder that a record
still calls complete; the release record goes last, so the name still resolves for a second `rm`.

Nothing is removed through a link out of the store: a part that is a symlink is removed itself (never what it
leads to), a folder's tree without following a link inside it, and a folder above a part that is a symlink
(`converted/` leading elsewhere) refuses the whole removal before anything goes (m7b.owned, exit 6).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from m7b.errors import NotFoundError, StorageError
from m7b.locks import hold
from m7b.owned import refuse_links_below, remove_own
from m7b.release import Release
from m7b.store import LAYOUTS, Store
from m7b.usage import StorePart, release_parts

REMOVAL_ORDER = ("report", "resume", "converted", "release", "torrent", "record")


@dataclass(frozen=True)
class Keep:
    """Parts a removal leaves in place."""

    torrent: bool = False  # the .torrent and the release record: the release can be fetched again by name
    converted: bool = False  # converted outputs


@dataclass(frozen=True)
class Removal:
    name: str
    remove: list[StorePart]  # in removal order
    kept: list[StorePart]

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.remove)


def plan_removal(store: Store, name: str, keep: Keep = Keep()) -> Removal:
    """What removing store release `name` would remove and keep; NotFoundError when the store holds nothing of it."""
    parts = release_parts(store, name)
    if not parts:
        raise NotFoundError(
            f"nothing of release {name!r} is in the store {store.home}: nothing to remove (see `m7b list`)",
            name=name,
        )
    kept_kinds = {"torrent", "record"} if keep.torrent else set()
    kept_kinds |= {"converted"} if keep.converted else set()
    remove = sorted((p for p in parts if p.kind not in kept_kinds), key=lambda p: REMOVAL_ORDER.index(p.kind))
    return Removal(name, remove, [p for p in parts if p.kind in kept_kinds])


def store_release(release: Release, store: Store) -> Release:
    """The resolved `release` when it is a store release the store holds something of; a folder outside the store
    is refused (m7b never deletes the user's folders), and so is a release with nothing in the store (NotFoundError)."""
    if not release.in_store:
        raise NotFoundError(
            f"{release.folder} is not a release in the store {store.home}: m7b removes only what it keeps in its "
            "store, never your folders; delete that folder yourself if you mean to",
            path=str(release.folder),
        )
    plan_removal(store, release.name)  # NotFoundError when the store holds nothing of it
    return release


@contextmanager
def _exclusive(store: Store, name: str, keep: Keep) -> Iterator[None]:
    with ExitStack() as stack:
        lock = store.release_lock(name)
        stack.enter_context(hold(store, lock, f"release {name}", wait=False, purpose="removed"))
        if not keep.converted:
            for layout in LAYOUTS:
                lock = store.converted_lock(name, layout)
                what = f"converted output {name}/{layout}"
                stack.enter_context(hold(store, lock, what, wait=False, purpose="removed"))
        yield


def remove_release(
    store: Store, name: str, keep: Keep = Keep(), confirm: Callable[[Removal], bool] = lambda removal: True
) -> Removal | None:
    """Remove store release `name` (but what `keep` keeps) once `confirm` agrees to the plan; None when it did
    not. The name is checked (a plan: NotFoundError, UnsafeError) before any lock is taken, so a wrong name leaves
    no lock file; the locks are then held from the final plan until the last part is gone (LockHeldError: nothing
    removed)."""
    plan_removal(store, name, keep)
    with _exclusive(store, name, keep):
        removal = plan_removal(store, name, keep)
        if not confirm(removal):
            return None
        for part in removal.remove:
            refuse_links_below(store.home, part.path.parent, "remove")
        for part in removal.remove:
            _remove(part)
        return removal


def _remove(part: StorePart) -> None:
    try:
        remove_own(part.path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(
            f"could not remove {part.path}: {exc.strerror}; the parts before it were removed, the rest are still "
            "there: fix the permissions and rerun",
            path=str(part.path),
        ) from exc
