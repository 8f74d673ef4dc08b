"""`m7b fetch`: download a release by magnet, name or .torrent, checking its metadata before any data.

Data lands in `<folder>/../.<folder>.partial/` and the folder gets its final name only when every piece has
passed its hash. Resume data is saved every few seconds and on exit, so a killed fetch resumes where it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libtorrent as lt

from m7b.atomic import storage_error, write_bytes
from m7b.errors import InvalidInputError, M7bError, MismatchError, NetworkError, NotFoundError, StorageError
from m7b.locks import LockWaitCallback, hold
from m7b.magnet import Magnet, parse_magnet, parse_peer
from m7b.manifests.schema import Manifest
from m7b.owned import own_dir, refuse_link, refuse_links_below, refuse_links_in, remove_own, touch_own
from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress
from m7b.release import NoteCallback, Release, ignore_note, name_for_hash, release_for, slug
from m7b.space import check_room, room_for
from m7b.store import Store, incomplete_marker_for, partial_dir_for
from m7b.torrent import TorrentMeta, load_torrent, meta_from_info
from m7b.verify.manifest_check import check_published_digests
from m7b.verify.release import signature_to_keep

from .dht import DhtAnnouncer, load_dht_state, save_dht_state
from .layout import check_against_manifest, files_not_in_place, renamed_files
from .resume import copy_folder, load_resume, record_complete, save_resume, still_complete
from .session import SessionOptions, make_session
from .sources import SourceWatch


@dataclass(frozen=True)
class FetchTarget:
    """What to fetch: a store name plus whatever is known up front (magnet, metadata, manifest)."""

    name: str
    info_hash: str
    magnet: Magnet | None = None
    torrent: lt.torrent_info | None = None
    manifest: Manifest | None = None


class FilesInTheWayError(StorageError):
    """The destination already holds files of the release that m7b did not write: nothing was changed."""

    def __init__(self, folder: Path, files: Sequence[str]) -> None:
        self.folder, self.files = folder, tuple(files)
        shown = ", ".join(self.files[:5]) + (f" and {len(self.files) - 5} more" if len(self.files) > 5 else "")
        super().__init__(
            f"{folder} already holds {len(self.files)} file(s) of this release that m7b did not write: {shown}. "
            "Nothing was changed: fetch into a new or empty folder, or repair this copy in place (every piece is "
            "rechecked and only the pieces that fail are written)"
        )


class NoMetadataSourceError(NetworkError):
    """A magnet fetched without its .torrent whose only working sources are web seeds: web seeds cannot send
    metadata. Raised at once when nothing else could bring a peer, else when the wait for metadata runs out."""

    def __init__(
        self, info_hash: str, web_seeds: Sequence[str], waited: float | None = None, problems: Sequence[str] = ()
    ) -> None:
        self.info_hash, self.web_seeds, self.problems = info_hash, tuple(web_seeds), tuple(problems)
        if waited is None:
            head = f"the metadata of {info_hash} can come only from a peer, and this magnet names no tracker or peer"
        else:
            detail = f" ({'; '.join(self.problems)})" if self.problems else ""
            head = f"no peer sent the metadata of {info_hash} within {waited:g} s{detail}"
        super().__init__(
            f"{head}: its web seeds ({', '.join(self.web_seeds)}) serve file data, not the metadata (BEP 19); "
            "give the release's .torrent file, check the magnet's trackers, or connect to a known peer (peers)",
            fields=("peers",),
            web_seeds=list(self.web_seeds),
            problems=list(self.problems),
        )


class NoDataError(NetworkError):
    """No data arrived for a while; `problems` names each source that failed (web seeds, trackers) in words."""

    def __init__(self, waited: float | None, peers: int, problems: Sequence[str]) -> None:
        self.waited, self.peers, self.problems = waited, peers, tuple(problems)
        detail = "".join(f"; {p}" for p in self.problems)
        if waited is None:
            message = (
                "no source is left that could send data: every web seed failed, no peer is connected and none can "
                f"be found (no tracker, no DHT){detail}; resume data was saved: rerun once a web seed works, or "
                "connect to a known peer (peers)"
            )
        else:
            message = (
                f"no data arrived for {waited:g} s ({peers} peers connected){detail}; resume data was saved: rerun "
                "the same command to continue"
            )
        super().__init__(message, fields=("peers",) if waited is None else (), problems=list(self.problems))


@dataclass(frozen=True)
class FetchResult:
    name: str
    path: Path
    info_hash: str
    total_size: int
    pieces: int
    downloaded_bytes: int  # payload received by this run
    pieces_at_start: int  # pieces already verified on disk when this run started
    hash_failures: int
    seconds: float

    def to_json(self) -> dict[str, object]:
        """The last line `m7b fetch --json` prints."""
        return {
            "event": "done",
            "name": self.name,
            "path": str(self.path),
            "info_hash": self.info_hash,
            "total_size": self.total_size,
            "pieces": self.pieces,
            "downloaded_bytes": self.downloaded_bytes,
            "pieces_at_start": self.pieces_at_start,
            "hash_failures": self.hash_failures,
            "seconds": round(self.seconds, 3),
            "rate_mib_s": round(self.downloaded_bytes / max(self.seconds, 1e-9) / (1 << 20), 1),
        }


@dataclass(frozen=True)
class FetchPlan:
    """What a user asked to fetch, resolved: the release, what to fetch it from, and where it goes."""

    release: Release
    target: FetchTarget
    dest: Path | None  # None: the store's release folder


def _manifest_magnet(manifest: Manifest) -> Magnet:
    t = manifest.torrent
    if t.magnet:
        return parse_magnet(t.magnet)
    if not t.info_hash:
        raise InvalidInputError(f"the manifest of {manifest.name} names no magnet or info-hash: nothing to fetch")
    xt = f"urn:btih:{t.info_hash_v1}" if t.info_hash_v1 else f"urn:btmh:1220{t.info_hash_v2}"
    return parse_magnet(f"magnet:?xt={xt}")


def fetch_target(release: Release) -> FetchTarget:
    """What to fetch for a resolved release (see m7b.release.resolve_release): its metadata when a .torrent is
    on disk, else its magnet (given, or made from its manifest)."""
    torrent = None
    magnet = release.magnet
    if release.torrent is not None:
        torrent, _ = load_torrent(release.torrent)
        meta_from_info(torrent)
    elif magnet is None and release.manifest is not None:
        magnet = _manifest_magnet(release.manifest)
    if torrent is None and magnet is None:
        raise NotFoundError(
            f"nothing to fetch {release.name} from: no magnet, no .torrent beside {release.folder} and no "
            "manifest naming one; give its magnet or .torrent file"
        )
    if magnet is not None:
        info_hash = magnet.info_hash
    else:
        assert torrent is not None  # refused above when both are missing
        info_hash = meta_from_info(torrent).info_hash
    return FetchTarget(
        name=release.name, info_hash=info_hash, magnet=magnet, torrent=torrent, manifest=release.manifest
    )


def plan_fetch(
    target: str | Release, store: Store, *, dest: Path | None = None, on_note: NoteCallback = ignore_note
) -> FetchPlan:
    """What `m7b fetch` fetches for `target` (a magnet, a release name, a .torrent, a manifest .toml, a folder with
    FOLDER.torrent beside it, or a resolved Release), and where: `dest`, else the store for a store release, else
    the folder named (fetched or repaired in place)."""
    release = release_for(target, store, on_note)
    what = fetch_target(release)
    if dest is None and not release.in_store:
        dest = release.folder
    return FetchPlan(release, what, dest)


def fetch_release(
    target: str | Release,
    *,
    store: Store | None = None,
    dest: Path | None = None,
    options: SessionOptions | None = None,
    peers: Sequence[str] = (),
    timeout: float = 120.0,
    resume_interval: float = 5.0,
    progress: ProgressCallback = ignore_progress,
    should_stop: Callable[[], bool] = lambda: False,
    repair: bool = False,
    wait: bool = True,
    on_wait: LockWaitCallback = lambda holder: None,
    on_note: NoteCallback = ignore_note,
    signature: Path | None = None,
) -> FetchResult:
    """Fetch what `target` names as `m7b fetch` does: `plan_fetch`, then `fetch` (see both). `store` defaults to
    `Store.from_env()` (M7B_HOME); `options` to a session for a user on the internet (`SessionOptions`). The
    release's signature (`signature`, else a .sig beside its .torrent or manifest) is kept with its torrent."""
    store = store or Store.from_env()
    plan = plan_fetch(target, store, dest=dest, on_note=on_note)
    signed = signature_to_keep(plan.release, signature)  # a hostile one refused before any data
    result = fetch(
        plan.target,
        store=store,
        dest=plan.dest,
        options=options,
        peers=peers,
        timeout=timeout,
        resume_interval=resume_interval,
        progress=progress,
        should_stop=should_stop,
        repair=repair,
        wait=wait,
        on_wait=on_wait,
        on_note=on_note,
    )
    if signed is not None:
        store.save_signature(result.info_hash, signed)
    return result


def _torrent_bytes(ti: lt.torrent_info, trackers: Sequence[str]) -> bytes:
    """A .torrent holding exactly the info dictionary the swarm sent (so its info-hash is unchanged)."""
    doc: dict[bytes, Any] = {b"info": lt.bdecode(ti.info_section())}
    if trackers:
        doc[b"announce"] = trackers[0].encode()
        doc[b"announce-list"] = [[t.encode()] for t in trackers]
    if ti.info_hashes().has_v2():
        layers = lt.create_torrent(ti).generate().get(b"piece layers")
        if layers:
            doc[b"piece layers"] = layers
    return lt.bencode(doc)


class _Download:
    """One fetch: the session, the handle, and the bookkeeping of its alert loop."""

    def __init__(
        self,
        target: FetchTarget,
        store: Store,
        final: Path,
        options: SessionOptions,
        progress: ProgressCallback,
        *,
        repair: bool,
        locks: ExitStack | None = None,
        on_note: NoteCallback = ignore_note,
    ) -> None:
        self.target, self.store, self.final, self.progress = target, store, final, progress
        self.locks, self.on_note = locks or ExitStack(), on_note
        self.moving = False  # the storage is being moved to the release's own name (see `take_torrent_name`)
        self.old_partial: Path | None = None
        self.partial = partial_dir_for(final)
        self.marker = incomplete_marker_for(final)
        self.in_place = final.is_dir() and any(final.iterdir())
        # a store release folder is m7b's own: fetching it again repairs it; any other folder is the user's
        self.repair = repair or final == store.release_dir(target.name)
        self.save_path = final if self.in_place else self.partial
        self.options = options
        if options.dht and options.dht_state is None:
            options = dataclasses.replace(options, dht_state=load_dht_state(store))
        self.session = make_session(options)
        self.dht = DhtAnnouncer(self.session, options.dht)
        self.started = time.monotonic()
        self.sources: SourceWatch | None = None
        self.known_peers: list[str] = []
        self.meta: TorrentMeta | None = None
        self.hash_failures = 0
        self.pieces_at_start = 0
        self.resume_pending = False
        self.flush_pending = False
        self.pending_renames: set[int] = set()

    def add(self, peers: Sequence[str]) -> lt.torrent_handle:
        t = self.target
        refuse_links_in(self.save_path, "write the download")  # libtorrent opens by name: a link inside would lead out
        if t.torrent is not None:
            self.meta = self._accept(t.torrent)
        resume = load_resume(self.store, t.info_hash, self.final)
        if (
            resume is not None
            and self.in_place
            and self.meta is not None
            and not still_complete(self.store, self.meta, self.final)
        ):
            resume = None  # files changed since m7b recorded them complete: libtorrent rechecks every piece
        atp = resume if resume is not None else lt.add_torrent_params()
        trackers = list(atp.trackers)
        seeds = list(atp.url_seeds)
        if t.magnet is not None:
            from_magnet = lt.parse_magnet_uri(t.magnet.uri)
            atp.info_hashes = from_magnet.info_hashes
            atp.name = from_magnet.name
            trackers += t.magnet.trackers
            seeds += t.magnet.web_seeds
        if t.manifest is not None:
            trackers += t.manifest.torrent.trackers
            seeds += t.manifest.torrent.web_seeds
        atp.trackers = list(dict.fromkeys(trackers))
        atp.tracker_tiers = list(range(len(atp.trackers)))  # each its own tier: all are announced to at once
        atp.url_seeds = list(dict.fromkeys(seeds))
        atp.save_path = str(self.save_path)
        flags = (atp.flags | lt.torrent_flags.update_subscribe) & ~lt.torrent_flags.auto_managed
        flags &= ~lt.torrent_flags.paused
        if t.torrent is not None and self.meta is not None:  # a torrent given: its meta was accepted above
            atp.ti = t.torrent
            atp.renamed_files = renamed_files(self.meta)
            flags &= ~lt.torrent_flags.upload_mode
        else:
            # metadata first: no piece is written before it is checked. (Not default_dont_download: a seed
            # closes connections to peers that want nothing, and they would not come back until the next
            # tracker announce.)
            flags |= lt.torrent_flags.upload_mode
        atp.flags = flags
        if resume is not None:
            self.pieces_at_start = sum(1 for have in resume.have_pieces if have)
        try:
            own_dir(self.save_path, self.save_path.parent)
        except OSError as exc:
            raise storage_error(exc, self.save_path) from exc
        self.known_peers = [*peers, *(t.magnet.peers if t.magnet else ())]
        if t.torrent is None and atp.url_seeds and not self._peer_sources(atp.trackers):
            raise NoMetadataSourceError(t.info_hash, list(atp.url_seeds))
        self.handle = self.session.add_torrent(atp)
        self.dht.watch(self.handle)
        self.sources = SourceWatch.of(self.handle)
        for peer in self.known_peers:
            self.handle.connect_peer(parse_peer(peer))
        return self.handle

    def _peer_sources(self, trackers: Sequence[str]) -> bool:
        """Whether anything could bring peers: trackers, known peers, DHT or local discovery."""
        return bool(trackers or self.known_peers or self.options.dht or self.options.lsd)

    def only_failed_web_seeds_left(self, status: lt.torrent_status) -> bool:
        """Every source is a web seed and each has failed in a way retrying will not mend: nothing can arrive."""
        seeds = self.sources.web_seeds if self.sources else []
        return (
            bool(seeds)
            and all(s.failed_for_good for s in seeds)
            and status.num_peers == 0
            and not self._peer_sources([t["url"] for t in self.handle.trackers()])
        )

    def _accept(self, ti: lt.torrent_info) -> TorrentMeta:
        meta = meta_from_info(ti)
        if self.target.manifest is not None:
            check_against_manifest(meta, self.target.manifest)
        self._check_room(meta)
        if self.in_place:
            self._check_files_in_the_way(meta)
            touch_own(self.marker)
        trackers = list(self.target.magnet.trackers) if self.target.magnet else []
        self.store.ensure_dir(self.store.torrents_dir)
        stored = self.store.torrent_path(meta.info_hash)
        if not stored.exists():
            write_bytes(stored, _torrent_bytes(ti, trackers))
        if self.final == self.store.release_dir(self.target.name):
            self.store.record_release(self.target.name, meta.info_hash)  # known by name from now on
        return meta

    def _check_room(self, meta: TorrentMeta) -> None:
        """Say the release's size and the free space, and refuse (nothing written) when what is missing does not
        fit. Runs before any data: for a magnet, once the metadata arrived, while the torrent is in upload mode."""
        room = room_for(self.save_path, [(f.path, f.size) for f in meta.data_files])
        room = dataclasses.replace(room, folder=self.final)  # said as the folder the user knows, not .partial
        self.progress(
            ProgressEvent(
                "space",
                room.present,
                room.size,
                item=self.target.name,
                extra={"folder": str(room.folder), "free": room.free, "needed": room.needed, "fits": room.fits},
            )
        )
        check_room(room, self.target.name)

    def _check_files_in_the_way(self, meta: TorrentMeta) -> None:
        """m7b rewrites a file already in the folder only when asked to repair, or when m7b itself wrote it
        (its record of a completed download still matches, or its own in-place run was interrupted)."""
        if self.repair or self.marker.exists() or still_complete(self.store, meta, self.final):
            return
        existing = [f.path for f in meta.data_files if os.path.lexists(self.final / f.path)]
        if existing:
            raise FilesInTheWayError(self.final, existing)

    def named_by_hash(self) -> bool:
        """A store release known only by its info-hash so far: a bare magnet, no manifest, no record."""
        t = self.target
        in_store = self.final == self.store.release_dir(t.name) and not self.in_place
        return in_store and t.name == slug(t.info_hash) and t.manifest is None

    def take_torrent_name(self, ti: lt.torrent_info) -> None:
        """A bare magnet's release takes the torrent's name once the metadata arrives (with the info-hash's first 8
        digits when another release has that name): its lock is taken, and the download, in upload mode, empty,
        moves to that name's .partial folder before any file is renamed or written."""
        t = self.target
        base = slug(ti.name())
        name = name_for_hash(self.store, t.info_hash, ti.name())
        if name == t.name:
            return
        final = self.store.release_dir(name)
        partial = partial_dir_for(final)
        for path, what in ((final, "put the release's files"), (partial, "put the download")):
            refuse_link(path, what)
        for path in (self.store.release_lock(name), self.store.release_record_path(name)):
            refuse_links_below(self.store.home, path)
        self.locks.enter_context(hold(self.store, self.store.release_lock(name), f"release {name}", wait=False))
        if final.exists() or partial.exists():
            raise StorageError(
                f"the torrent {t.info_hash} names itself {ti.name()!r}, but {final if final.exists() else partial} "
                f"is already in the store without a record of it: move it away, or fetch with --dest"
            )
        clash = f" (a release named {base} with another info-hash is in the store)" if name != base else ""
        self.on_note(f"the torrent {t.info_hash} names itself {ti.name()!r}: stored as {name}{clash}")
        old_partial = self.partial
        own_dir(partial, partial.parent)
        self.target = dataclasses.replace(t, name=name)
        self.final, self.partial, self.save_path = final, partial, partial
        self.marker = incomplete_marker_for(final)
        self.moving, self.old_partial = True, old_partial
        self.handle.move_storage(str(partial), lt.move_flags_t.dont_replace)

    def drop_old_partial(self) -> None:
        """The .partial folder named by the info-hash, left empty by the move (nothing is written in upload mode)."""
        if self.old_partial is not None:
            with contextlib.suppress(OSError):
                self.old_partial.rmdir()

    def on_metadata(self) -> None:
        ti = self.handle.torrent_file()
        assert ti is not None  # called on libtorrent's metadata_received_alert: the torrent has its metadata
        if self.named_by_hash():
            self.take_torrent_name(ti)
        self.meta = self._accept(ti)
        if not self.moving:
            self.rename_files()

    def rename_files(self) -> None:
        assert self.meta is not None
        renames = renamed_files(self.meta)
        self.pending_renames = set(renames)
        for index, path in renames.items():
            self.handle.rename_file(index, path)

    def on_renamed(self, index: int) -> None:
        # Renames run on libtorrent's disk threads, beside writes: leave upload mode only when all are done,
        # or a first piece could be written under the old name.
        self.pending_renames.discard(index)
        if not self.pending_renames:
            if self.in_place:
                self.handle.force_recheck()  # files already there were checked under the old names: check again
            self.handle.unset_flags(lt.torrent_flags.upload_mode)

    def handle_alerts(self) -> None:
        for alert in self.session.pop_alerts():
            if self.sources is not None:
                self.sources.on_alert(alert)
            if isinstance(alert, lt.metadata_received_alert):
                self.on_metadata()
            elif isinstance(alert, lt.storage_moved_alert) and self.moving:
                self.moving = False
                self.drop_old_partial()
                self.rename_files()
            elif isinstance(alert, lt.storage_moved_failed_alert) and self.moving:
                raise StorageError(
                    f"could not move the download to {self.save_path}: {alert.error.message()}; check the folder "
                    "and rerun"
                )
            elif isinstance(alert, lt.file_renamed_alert):
                self.on_renamed(alert.index)
            elif isinstance(alert, lt.file_rename_failed_alert):
                raise StorageError(
                    f"could not place file {alert.index} of the torrent in {self.save_path}: "
                    f"{alert.error.message()}; check the folder and rerun"
                )
            elif isinstance(alert, lt.hash_failed_alert):
                self.hash_failures += 1
            elif isinstance(alert, lt.cache_flushed_alert):
                self.flush_pending = False
            elif isinstance(alert, lt.save_resume_data_alert):
                save_resume(self.store, self.target.info_hash, alert.params, self.final)
                self.resume_pending = False
            elif isinstance(alert, lt.save_resume_data_failed_alert):
                self.resume_pending = False
            elif isinstance(alert, lt.file_error_alert):
                raise StorageError(
                    f"could not write {alert.filename()}: {alert.error.message()}; the download "
                    "stopped, resume data was kept: free space or fix permissions and rerun"
                )
            elif isinstance(alert, lt.torrent_error_alert):
                raise StorageError(f"libtorrent stopped the download: {alert.message()}")

    def settle(self, wait: float = 120.0) -> None:
        """Wait until every block libtorrent accepted is written to its file and the files are closed.

        libtorrent 2 hashes a piece from its write buffer, so a piece passes (and the torrent reports itself
        finished) before its blocks reach the disk; with many files per piece the gap is seconds. flush_cache
        queues a fence behind every outstanding disk job of the torrent; cache_flushed_alert says it ran.
        """
        self.flush_pending = True
        self.handle.flush_cache()
        deadline = time.monotonic() + wait
        while self.flush_pending:
            if time.monotonic() > deadline:
                raise StorageError(
                    f"libtorrent did not finish writing to {self.save_path} within {wait:g} s; resume data was "
                    "kept: check the disk and rerun the same command"
                )
            self.session.wait_for_alert(100)
            self.handle_alerts()

    def save_resume_now(self, wait: float = 10.0) -> None:
        if self.meta is None or not self.handle.is_valid():
            return
        self.resume_pending = True
        self.handle.save_resume_data(lt.save_resume_flags_t.flush_disk_cache | lt.save_resume_flags_t.save_info_dict)
        deadline = time.monotonic() + wait
        while self.resume_pending and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            try:
                self.handle_alerts()
            except M7bError:
                break

    def event(self, status: lt.torrent_status, phase: str) -> None:
        rate = status.download_payload_rate
        left = status.total_wanted - status.total_wanted_done
        sources = self.sources
        if sources is not None:
            sources.refresh()
        self.progress(
            ProgressEvent(
                phase,
                status.total_wanted_done if phase != "metadata" else 0,
                status.total_wanted if phase != "metadata" else None,
                item=self.target.name,
                extra={
                    "rate": rate,
                    "peers": status.num_peers,
                    "seeds": status.num_seeds,
                    "eta": (left / rate) if rate > 0 else None,
                    "elapsed": round(time.monotonic() - self.started, 3),
                    "hash_failures": self.hash_failures,
                    "trackers": [dataclasses.asdict(t) for t in sources.trackers] if sources else [],
                    "web_seeds": [dataclasses.asdict(w) for w in sources.web_seeds] if sources else [],
                },
            )
        )


def _phase(download: _Download, status: lt.torrent_status) -> str:
    if download.meta is None:
        return "metadata"
    if status.state in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data):
        return "checking"
    return "downloading"


def fetch(
    target: FetchTarget,
    *,
    store: Store,
    dest: Path | None = None,
    options: SessionOptions | None = None,
    peers: Sequence[str] = (),
    timeout: float = 120.0,
    resume_interval: float = 5.0,
    progress: ProgressCallback = ignore_progress,
    should_stop: Callable[[], bool] = lambda: False,
    repair: bool = False,
    wait: bool = True,
    on_wait: LockWaitCallback = lambda holder: None,
    on_note: NoteCallback = ignore_note,
) -> FetchResult:
    """Download `target` into `dest` (default: the store's release folder); every piece is hash-checked.

    `timeout` bounds the wait for metadata and any stretch without new data. Interrupts (KeyboardInterrupt,
    `should_stop`) save resume data before returning control.

    A release in the store is m7b's: fetching it again rechecks it and rewrites only failing pieces. A `dest`
    folder is the user's: a file of the release already there is refused (FilesInTheWayError, nothing changed)
    unless `repair`, or m7b's own record shows it wrote that copy. One command at a time writes a release (and
    its resume data): a second one waits, reporting the holder through `on_wait`, or without `wait` fails at once.
    A release known only by its info-hash (a bare magnet) takes the torrent's name once the metadata arrives,
    said through `on_note` (FetchResult.name is the name it got).
    """
    final = Path(dest) if dest is not None else store.release_dir(target.name)
    _refuse_links(target, store, final)
    if final.exists() and not final.is_dir():
        raise StorageError(f"{final} is a file, not a folder: choose a folder for the release's files")
    with (
        hold(
            store,
            store.release_lock(target.name),
            f"release {target.name}",
            wait=wait,
            on_wait=on_wait,
            should_stop=should_stop,
        ),
        ExitStack() as locks,
    ):
        return _fetch_locked(
            target,
            store,
            final,
            options or SessionOptions(),
            peers,
            timeout,
            resume_interval,
            progress,
            should_stop,
            repair,
            locks,
            on_note,
        )


def _refuse_links(target: FetchTarget, store: Store, final: Path) -> None:
    """Before anything is written: every fixed name this fetch would write (libtorrent follows links by name) and
    every store folder above one must be m7b's own, never a symlink (m7b.owned: exit 6, its target untouched)."""
    for path, what in (
        (final, "put the release's files"),
        (partial_dir_for(final), "put the download"),
        (incomplete_marker_for(final), "put its repair marker"),
    ):
        refuse_link(path, what)
    copy = copy_folder(store, final)
    in_store = [store.torrent_path(target.info_hash), store.resume_path(target.info_hash, copy)]
    in_store += [store.completion_path(target.info_hash, copy), store.release_lock(target.name)]
    in_store += [store.dht_state_path]
    if final == store.release_dir(target.name):
        in_store += [final, store.release_record_path(target.name)]
    for path in in_store:
        refuse_links_below(store.home, path)


def _fetch_locked(
    target: FetchTarget,
    store: Store,
    final: Path,
    options: SessionOptions,
    peers: Sequence[str],
    timeout: float,
    resume_interval: float,
    progress: ProgressCallback,
    should_stop: Callable[[], bool],
    repair: bool,
    locks: ExitStack,
    on_note: NoteCallback,
) -> FetchResult:
    if final == store.release_dir(target.name):
        store.ensure_dir(final.parent)
    else:
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, final) from exc
    stored = store.torrent_path(target.info_hash)
    if target.torrent is None and stored.is_file():
        # another command may have learnt the metadata while this one waited for the lock
        target = dataclasses.replace(target, torrent=load_torrent(stored)[0])
    download = _Download(target, store, final, options, progress, repair=repair, locks=locks, on_note=on_note)
    created_partial = not download.partial.exists()
    start = time.monotonic()
    try:
        handle = download.add(peers)
    except M7bError:
        if created_partial:
            _discard(download.partial)
        raise
    last_change, last_done, last_resume = start, -1, start
    try:
        while True:
            if should_stop():
                raise KeyboardInterrupt
            download.session.wait_for_alert(200)
            download.handle_alerts()
            download.dht.tick(time.monotonic())
            status = handle.status()
            phase = _phase(download, status)
            download.event(status, phase)
            now = time.monotonic()
            # finished: every file is wanted and every wanted piece has passed its hash
            if (
                download.meta is not None
                and phase == "downloading"
                and status.is_finished
                and status.total_wanted >= download.meta.total_size
            ):
                break
            problems = download.sources.problems() if download.sources else []
            if not options.utp and status.num_peers == 0 and download.known_peers:
                problems.append("uTP is off in the loopback profile: a peer that accepts only uTP cannot be reached")
            if status.total_wanted_done != last_done or phase == "checking":
                last_change, last_done = now, status.total_wanted_done
            elif phase == "downloading" and download.only_failed_web_seeds_left(status):
                raise NoDataError(None, status.num_peers, problems)
            elif now - last_change > timeout:
                if phase == "metadata":
                    web_seeds = download.sources.web_seeds if download.sources else []
                    if web_seeds and status.num_peers == 0:
                        raise NoMetadataSourceError(target.info_hash, [w.url for w in web_seeds], timeout, problems)
                    raise NetworkError(
                        f"no peer sent the metadata of {target.info_hash} within {timeout:g} s "
                        f"({status.num_peers} peers connected"
                        + "".join(f"; {p}" for p in problems)
                        + "): check the magnet's trackers, connect to a known peer (peers), or raise the timeout "
                        "(timeout)",
                        fields=("peers", "timeout"),
                    )
                raise NoDataError(timeout, status.num_peers, problems)
            if now - last_resume > resume_interval and download.meta is not None and handle.need_save_resume_data():
                handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
                last_resume = now
        # every piece passed its hash; whether the files are complete is judged once every write has landed
        download.settle()
    except BaseException:
        if download.meta is None and created_partial:
            # refused, timed out or interrupted before the metadata: nothing was written and no resume data exists
            # yet, so the folder this run made goes (else an empty .partial no command could name stays behind)
            download.session.pause()
            _discard(download.partial)
        else:
            download.save_resume_now()
            download.session.pause()
        download.drop_old_partial()
        save_dht_state(store, download.session)
        raise
    status = handle.status()
    download.save_resume_now(wait=30.0)
    download.session.remove_torrent(handle)
    save_dht_state(store, download.session)
    target, final, marker = download.target, download.final, download.marker  # a bare magnet's: its new name
    meta = download.meta
    assert meta is not None
    wrong = files_not_in_place(meta, download.save_path)
    if wrong:
        raise StorageError(
            f"every piece passed its hash but {len(wrong)} file(s) are missing or have the wrong size in "
            f"{download.save_path} (first: {wrong[0]}); resume data was kept: rerun the same command to recheck"
        )
    if target.manifest is not None:
        _check_published_digests(target, download, progress)
    if not download.in_place:
        if final.exists():
            final.rmdir()  # an empty folder the user made for us
        _remove_empty_folders(download.partial)
        os.replace(download.partial, final)
        resume = load_resume(store, target.info_hash, final)
        if resume is not None:
            resume.save_path = str(final)
            save_resume(store, target.info_hash, resume, final)
    record_complete(store, meta, final)
    marker.unlink(missing_ok=True)
    progress(ProgressEvent("done", meta.total_size, meta.total_size, item=target.name))
    return FetchResult(
        name=target.name,
        path=final,
        info_hash=target.info_hash,
        total_size=meta.total_size,
        pieces=meta.num_pieces,
        downloaded_bytes=status.total_payload_download,
        pieces_at_start=download.pieces_at_start,
        hash_failures=download.hash_failures,
        seconds=time.monotonic() - start,
    )


def _check_published_digests(target: FetchTarget, download: _Download, progress: ProgressCallback) -> None:
    """Every piece matched the torrent; the files must also have the sha256/md5 the manifest publishes (one read).
    When one does not, the torrent and its publisher disagree: the data keeps its unfinished name (`.partial`, or
    the `.incomplete` marker of a copy written in place) with no completion record, so it is never the release
    under its name, and the resume data stays, so a rerun with a corrected manifest finishes without downloading."""
    manifest = target.manifest
    assert manifest is not None
    failed = check_published_digests(manifest, download.save_path, progress)
    if not failed:
        return
    first = failed[0]
    more = f" (and {len(failed) - 1} more file(s))" if len(failed) > 1 else ""
    if download.in_place:
        kept = f"the files stay in {download.final}, marked incomplete"
    else:
        kept = f"the data stays in {download.save_path}, not renamed to {download.final}"
    raise MismatchError(
        f"{first.message}{more}: every piece matched the torrent, so the torrent and the manifest of {manifest.name} "
        f"disagree; {kept} (resume data kept). Check that the manifest is the publisher's and tell them; rerun once "
        f"the manifest is corrected, or remove the download with `m7b rm {target.name}`",
        path=first.path,
        files=[f.path for f in failed],
        **first.detail,
    )


def _remove_empty_folders(folder: Path) -> None:
    """libtorrent may leave an empty folder named after the torrent from before the files were renamed."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink() and not any(child.rglob("*")):
            remove_own(child)


def _discard(folder: Path) -> None:
    """Remove the .partial folder this run made (a link is removed itself, never followed); quietly."""
    with contextlib.suppress(OSError):
        remove_own(folder)
