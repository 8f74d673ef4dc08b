"""`m7b seed`: a mirror that serves only releases whose data matches their torrent.

Before a release is served, either every piece is rechecked, or m7b's own record of a completed, hash-checked
download (or of an earlier full recheck), or a passing `m7b verify` report, still matches the files' sizes and
mtimes; then libtorrent's seed mode checks each piece again on its first request. A release with a failing
piece is refused, never served, and torrents run in upload mode so a mirror never downloads into what it serves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import libtorrent as lt

from m7b.errors import NotFoundError
from m7b.locks import hold
from m7b.release import NoteCallback, Release, ignore_note, release_for
from m7b.store import Store, unchanged_since
from m7b.torrent import TorrentMeta, load_torrent, meta_from_info, store_hash
from m7b.verify.findings import Status, error_for
from m7b.verify.release import release_trust, verify

from .dht import DhtAnnouncer, load_dht_state, save_dht_state
from .layout import renamed_files
from .resume import copy_folder, record_complete, save_resume, still_complete
from .session import SessionOptions, make_session
from .sources import SourceWatch, TrackerStatus


@dataclass(frozen=True)
class SeedRelease:
    name: str
    folder: Path
    torrent: lt.torrent_info
    meta: TorrentMeta
    signer: str | None = None  # the key fingerprint whose signature was checked (`require_signature`)


@dataclass
class ReleaseStatus:
    name: str
    info_hash: str
    state: str  # checking / seeding / refused
    peers: int = 0
    uploaded: int = 0
    upload_rate: int = 0
    trusted_record: bool = False
    reason: str = ""
    failed_files: list[str] = field(default_factory=list)
    size: int = 0
    seeds: int = 0  # connected peers that hold every piece
    leechers: int = 0  # connected peers still downloading
    swarm_seeds: int | None = None  # the trackers' count of the whole swarm, None until one replies
    swarm_leechers: int | None = None
    all_time_uploaded: int = 0  # across runs, from resume data
    ratio: float = 0.0  # all-time uploaded / release size (a mirror downloads nothing)
    trackers: list[TrackerStatus] = field(default_factory=list)
    last_check: str = ""  # full recheck / record of a checked download / verify report
    last_check_at: float | None = None  # unix time the data were last checked piece by piece
    check_verdict: str = "pending"  # pending / passed / failed
    signer: str | None = None  # sha256 fingerprint of the key whose OMS signature vouches for it (--require-signature)


def seed_release(release: Release) -> SeedRelease:
    """A resolved release (see m7b.release.resolve_release) ready to serve: its folder and its torrent."""
    if not release.folder.is_dir():
        raise NotFoundError(
            f"{release.name} is not in the store ({release.folder}): run `m7b fetch {release.name}` first"
            if release.in_store
            else f"release folder {release.folder} not found"
        )
    if release.torrent is None:
        raise NotFoundError(
            f"no torrent for {release.folder}: expected {release.folder.parent / (release.folder.name + '.torrent')} "
            f"(make it with `m7b release create {release.folder}`) or a torrent named {release.folder.name!r} in "
            "the store"
        )
    ti, _ = load_torrent(release.torrent)
    return SeedRelease(name=release.name, folder=release.folder, torrent=ti, meta=meta_from_info(ti))


def seed_releases(
    targets: Sequence[str | Release],
    store: Store,
    *,
    on_note: NoteCallback = ignore_note,
    require_signature: bool = False,
    public_keys: Sequence[Path] = (),
) -> list[SeedRelease]:
    """What `m7b seed` serves for each target (a release name, a magnet, a .torrent, a release folder with
    FOLDER.torrent beside it, or a resolved Release): its folder and torrent, checked to be there. With
    `require_signature` a release is refused (the error of its signature's verdict) unless its OMS signature
    verifies against its manifest's keys (or `public_keys`) and the sha256 of its files as a passing verify report
    recorded them (else a verify reads them first)."""
    out = []
    for target in targets:
        release = release_for(target, store, on_note)
        seed = seed_release(release)
        out.append(replace(seed, signer=signed_by(store, release, public_keys)) if require_signature else seed)
    return out


def open_mirror(
    targets: Sequence[str | Release],
    *,
    store: Store | None = None,
    options: SessionOptions | None = None,
    trackers: Sequence[str] = (),
    on_note: NoteCallback = ignore_note,
    require_signature: bool = False,
    public_keys: Sequence[Path] = (),
) -> Mirror:
    """A mirror serving `targets` as `m7b seed` serves them: every release rechecked (or trusted from m7b's record
    of a checked download or a passing verify report) before a byte is served; `poll()` for their statuses,
    `serve` to run it, `close()` (or a `with` block) to stop. `store` defaults to `Store.from_env()` (M7B_HOME),
    `options` to a session for a user on the internet; `require_signature`: see `seed_releases`."""
    store = store or Store.from_env()
    releases = seed_releases(
        targets, store, on_note=on_note, require_signature=require_signature, public_keys=public_keys
    )
    return Mirror(releases, store, options or SessionOptions(), trackers=trackers)


def signed_by(store: Store, release: Release, public_keys: Sequence[Path] = ()) -> str:
    """The fingerprint of the key whose signature vouches for `release`, checked against the sha256 of a passing
    verify report whose files are unchanged since (else a verify reads them now); the verdict's error otherwise."""
    trust = release_trust(store, release, None, public_keys, require=True)
    digests = _reported_digests(store, release)
    if digests is None:
        report = verify(release, store, public_keys=public_keys, require_signature=True).report
        if report.verdict != Status.OK:
            worst = next(f for f in report.failures() if f.status == report.verdict)
            raise error_for(report.verdict)(f"{release.name}: not served — it does not verify: {worst.message}")
        digests = {f.path: f.sha256 for f in report.files if f.sha256}
    checked = trust.check(digests)
    if checked.verdict != "signed" or checked.signer is None:
        raise error_for(checked.finding.status if checked.finding.status != Status.OK else Status.MISSING)(
            f"{release.name}: not served — a signature is required (--require-signature): {checked.finding.message}"
        )
    return checked.signer


def _reported_digests(store: Store, release: Release) -> dict[str, str] | None:
    """The files' sha256 from the store's passing report, when every file is unchanged since it was read."""
    if not release.in_store or not store.is_verified(release.name):
        return None
    try:
        report = json.loads(store.report_path(release.name).read_text(encoding="utf-8"))
        files = report["files"]
        if not all(unchanged_since(release.folder, entry) for entry in files):
            return None
        return {str(e["path"]): str(e["sha256"]) for e in files if e.get("sha256")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def seeding(store: Store, releases: Sequence[SeedRelease]) -> Iterator[None]:
    """Hold each release's lock shared while it is served: no fetch, convert or rm changes it meanwhile (they fail
    at once naming this seed), and a release being written is refused at once (LockHeldError)."""
    with ExitStack() as stack:
        for release in releases:
            lock = store.release_lock(release.name)
            stack.enter_context(hold(store, lock, f"release {release.name}", shared=True, purpose="seeded"))
        yield


def failing_files(release: SeedRelease, handle: lt.torrent_handle) -> list[str]:
    pieces = handle.status().pieces
    bad: set[str] = set()
    for index, have in enumerate(pieces):
        if not have:
            for slice_ in release.torrent.map_block(index, 0, release.torrent.piece_size(index)):
                f = release.meta.files[slice_.file_index]
                if not f.pad:
                    bad.add(f.path)
    return sorted(bad)


def _earlier_check(store: Store, release: SeedRelease, recorded: bool) -> dict[str, object]:
    """Where a trusted release's last piece-by-piece check comes from, and when it ran (the record's mtime)."""
    if recorded:
        path = store.completion_path(release.meta.info_hash, copy_folder(store, release.folder))
        kind = "record of a checked download"
    else:
        path, kind = store.report_path(release.name), "verify report"
    try:
        when: float | None = path.stat().st_mtime
    except OSError:
        when = None
    return {"last_check": kind, "last_check_at": when}


class Mirror:
    """One libtorrent session serving any number of releases."""

    def __init__(
        self, releases: Sequence[SeedRelease], store: Store, options: SessionOptions, trackers: Sequence[str] = ()
    ) -> None:
        self.releases = list(releases)
        self.store = store
        self._locks = ExitStack()  # held until close(): see `seeding`
        self._closed = False
        self._locks.enter_context(seeding(store, self.releases))
        if options.dht and options.dht_state is None:
            options = replace(options, dht_state=load_dht_state(store))
        self.session = make_session(options)
        # a mirror is found by a bare magnet alone, from its first minute
        self.dht = DhtAnnouncer(self.session, options.dht)
        self.handles: dict[str, lt.torrent_handle] = {}
        self.status: dict[str, ReleaseStatus] = {}
        self.sources: dict[str, SourceWatch] = {}
        for release in self.releases:
            # m7b's own record of a hash-checked download/recheck, or a passing `m7b verify` report (which
            # checked every piece against this torrent) whose files are unchanged since
            recorded = still_complete(store, release.meta, release.folder)
            trusted = recorded or (
                release.folder == store.release_dir(release.name).resolve() and store.is_verified(release.name)
            )
            atp = lt.add_torrent_params()
            atp.ti = release.torrent
            atp.save_path = str(release.folder)
            atp.renamed_files = renamed_files(release.meta)
            atp.trackers = list(dict.fromkeys([*release.meta.trackers, *trackers]))
            atp.tracker_tiers = list(range(len(atp.trackers)))  # each its own tier: all are announced to at once
            flags = (atp.flags | lt.torrent_flags.upload_mode) & ~lt.torrent_flags.auto_managed
            flags &= ~lt.torrent_flags.paused
            if trusted:
                flags |= lt.torrent_flags.seed_mode
            atp.flags = flags
            handle = self.session.add_torrent(atp)
            self.dht.watch(handle)
            self.handles[release.name] = handle
            self.sources[release.name] = watch = SourceWatch.of(handle)
            self.status[release.name] = ReleaseStatus(
                release.name,
                release.meta.info_hash,
                "checking",
                trusted_record=trusted,
                size=release.meta.total_size,
                trackers=watch.trackers,
                signer=release.signer,
                **_earlier_check(store, release, recorded) if trusted else {"last_check": "full recheck"},
            )

    @property
    def listen_port(self) -> int:
        return self.session.listen_port()

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self) -> list[ReleaseStatus]:
        """Handle alerts, refuse releases that failed their check, and return every release's status."""
        now = time.monotonic()
        for alert in self.session.pop_alerts():
            if isinstance(alert, lt.save_resume_data_alert):
                self._save_resume(alert.params)
            else:
                for watch in self.sources.values():
                    watch.on_alert(alert)
        self.dht.tick(now)
        for release in self.releases:
            current = self.status[release.name]
            if current.state == "refused":
                continue
            handle = self.handles[release.name]
            st = handle.status()
            checking = st.state in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data)
            if checking:
                current.state = "checking"
            elif st.is_seeding and st.num_pieces == release.meta.num_pieces:
                if current.state == "checking" and not current.trusted_record:
                    record_complete(self.store, release.meta, release.folder)  # a full recheck passed
                    current.last_check_at = time.time()
                current.state, current.check_verdict = "seeding", "passed"
            else:
                self.refuse(release, st)
                continue
            current.peers, current.uploaded, current.upload_rate = (
                st.num_peers,
                st.total_payload_upload,
                st.upload_payload_rate,
            )
            current.seeds, current.leechers = st.num_seeds, st.num_peers - st.num_seeds
            current.swarm_seeds = st.num_complete if st.num_complete >= 0 else current.swarm_seeds
            current.swarm_leechers = st.num_incomplete if st.num_incomplete >= 0 else current.swarm_leechers
            current.all_time_uploaded = st.all_time_upload
            current.ratio = st.all_time_upload / max(release.meta.total_size, 1)
        return list(self.status.values())

    def refuse(self, release: SeedRelease, st: lt.torrent_status) -> None:
        handle = self.handles[release.name]
        current = self.status[release.name]
        current.failed_files = failing_files(release, handle)
        missing = release.meta.num_pieces - st.num_pieces
        current.state, current.peers, current.upload_rate = "refused", 0, 0
        current.seeds = current.leechers = 0
        current.check_verdict, current.last_check_at = "failed", time.time()
        current.reason = (
            f"{missing} of {release.meta.num_pieces} pieces fail their hash "
            f"(files: {', '.join(current.failed_files)}): not served; run `m7b verify` for details"
        )
        self.session.remove_torrent(handle)

    def ready(self) -> bool:
        return all(s.state != "checking" for s in self.status.values())

    def close(self, wait: float = 10.0) -> None:
        """Save resume data of every served release, then stop the session (once: later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        pending = 0
        for name, handle in self.handles.items():
            if self.status[name].state == "seeding" and handle.is_valid():
                handle.save_resume_data(lt.save_resume_flags_t.save_info_dict)
                pending += 1
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            self.session.wait_for_alert(100)
            for alert in self.session.pop_alerts():
                if isinstance(alert, lt.save_resume_data_alert):
                    self._save_resume(alert.params)
                    pending -= 1
                elif isinstance(alert, lt.save_resume_data_failed_alert):
                    pending -= 1
        save_dht_state(self.store, self.session)
        self.session.pause()
        self._locks.close()

    def _save_resume(self, params: lt.add_torrent_params) -> None:
        info_hash = store_hash(params.info_hashes)
        folder = next((r.folder for r in self.releases if r.meta.info_hash == info_hash), Path(params.save_path))
        save_resume(self.store, info_hash, params, folder)


def serve(
    mirror: Mirror,
    report: Callable[[list[ReleaseStatus]], None],
    should_stop: Callable[[], bool],
    interval: float = 5.0,
    observe: Callable[[list[ReleaseStatus]], None] | None = None,
) -> None:
    """Run until `should_stop()`: report status every `interval` seconds, as soon as checks finish, and once
    more with the final totals when stopping. `observe` sees every poll (a status page's live view)."""
    last, was_ready = 0.0, False
    try:
        while not should_stop():
            mirror.session.wait_for_alert(200)
            statuses = mirror.poll()
            if observe:
                observe(statuses)
            now = time.monotonic()
            if now - last >= interval or (mirror.ready() and not was_ready):
                report(statuses)
                last, was_ready = now, mirror.ready()
        time.sleep(1.0)  # libtorrent folds transfer counters into torrent totals once a second
        statuses = mirror.poll()
        if observe:
            observe(statuses)
        report(statuses)
    finally:
        mirror.close()
