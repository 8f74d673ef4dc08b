"""Load and validate manifest TOML files; every error names the file and the field."""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, overload

from m7b.errors import InvalidInputError, M7bError, NotFoundError
from m7b.magnet import parse_magnet
from m7b.paths import length_problem, path_problem

from .architecture import architecture_from_mapping
from .schema import ArchiveFacts, CheckpointFacts, FileFacts, Manifest, TorrentFacts

SCHEMA_VERSION = 1
BUNDLED_DIR = Path(__file__).parent
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
HEX = {"info_hash_v1": 40, "info_hash_v2": 64, "sha256": 64, "md5": 32}

_TOP = {
    "schema",
    "name",
    "title",
    "publisher",
    "release_date",
    "license",
    "torrent",
    "files",
    "architecture",
    "checkpoint",
    "archives",
    "sources",
    "signing",
}
# Bounds no real manifest reaches (Mistral 7B: 4 files in a 3 KB manifest; Mixtral 8x22B in the Hugging Face layout:
# 59 shards), refused beyond them (exit 4) so that loading one is quick whatever a file holds.
MAX_MANIFEST_BYTES = 4 << 20
MAX_FILES = 10_000  # a many-file release (a sharded checkpoint, a dataset) stays far below; 4 real Mistral files
MAX_LIST = 1_000  # trackers, web seeds, archives
MAX_LABEL = 256  # characters of a name, title, publisher or license
MAX_TEXT = 8_192  # characters of any other text: a path, magnet, URL, source
MAX_DEPTH = 8  # tables and lists inside one another (a manifest needs 3: architecture.moe.field)

_TORRENT = {"name", "info_hash_v1", "info_hash_v2", "magnet", "trackers", "web_seeds", "files_complete"}
_FILE = {"path", "size", "sha256", "md5"}
_CHECKPOINT = {"tensors", "parameters", "dtype"}
_ARCHIVE = {"name", "md5", "sha256", "url"}
_SIGNING = {"keys"}
MAX_KEYS = 16
_FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----\n?")


class _Reader:
    """Typed access to one table of a manifest, with errors that name file and field."""

    def __init__(self, origin: str, where: str, table: Any, allowed: set[str]) -> None:
        self.origin, self.where = origin, where
        if not isinstance(table, dict):
            self.fail("", f"expected a table, found {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(unknown[0], f"unknown field; expected one of {', '.join(sorted(allowed))}")
        self.table = table

    def fail(self, key: str, message: str) -> NoReturn:
        field_name = f"{self.where}.{key}" if self.where and key else (key or self.where)
        raise InvalidInputError(f"{self.origin}: field '{field_name}': {message}")

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
        if key not in self.table:
            if required:
                self.fail(key, "missing (required)")
            return None
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool:
            self.fail(key, f"expected {_kind_name(kind)}, found a boolean")
        if not isinstance(value, kind):
            self.fail(key, f"expected {_kind_name(kind)}, found {type(value).__name__} {value!r}")
        return value

    @overload
    def text(self, key: str, required: Literal[True], limit: int = MAX_TEXT) -> str: ...

    @overload
    def text(self, key: str, required: bool = False, limit: int = MAX_TEXT) -> str | None: ...

    def text(self, key: str, required: bool = False, limit: int = MAX_TEXT) -> str | None:
        value = self.get(key, str, required)
        if value is not None and not value.strip():
            self.fail(key, "must not be empty")
        if value is not None and len(value) > limit:
            self.fail(key, f"expected at most {limit:,} characters, found {len(value):,}; no real release needs more")
        return value

    def hexdigest(self, key: str, length_key: str | None = None) -> str | None:
        value = self.text(key)
        if value is not None:
            n = HEX[length_key or key]
            if not re.fullmatch(rf"[0-9a-f]{{{n}}}", value):
                self.fail(key, f"expected {n} lowercase hex digits, found {value!r}")
        return value

    def count(self, key: str) -> int | None:
        value = self.get(key, int)
        if value is not None and value < 0:
            self.fail(key, f"must not be negative, found {value}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list)
        if value is None:
            return ()
        self.bounded(key, value, MAX_LIST)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item or len(item) > MAX_TEXT:
                self.fail(f"{key}[{i}]", f"expected a non-empty string of at most {MAX_TEXT:,} characters")
        return tuple(value)

    def tables(self, key: str, limit: int = MAX_LIST) -> list[Any]:
        value = self.get(key, list) or []
        self.bounded(key, value, limit)
        return value

    def bounded(self, key: str, value: list[Any], limit: int) -> None:
        if len(value) > limit:
            self.fail(key, f"expected at most {limit:,} entries, found {len(value):,}; no real release has more")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        list: "a list",
        dict: "a table",
        bool: "true or false",
        dt.date: "a date (YYYY-MM-DD)",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _safe_relative(reader: _Reader, key: str, value: str) -> str:
    problem = path_problem(value) or length_problem(value)
    if problem is not None:
        reader.fail(key, f"expected a relative path inside the release, found {value!r} (it {problem})")
    return value


def parse_manifest(raw: dict[str, Any], origin: str) -> Manifest:
    """Validate a manifest mapping (as read from TOML); `origin` names it in errors."""
    top = _Reader(origin, "", raw, _TOP)
    schema = top.get("schema", int, required=True)
    if schema != SCHEMA_VERSION:
        top.fail("schema", f"expected {SCHEMA_VERSION}, found {schema}; upgrade m7b to read this manifest")
    name = top.text("name", required=True, limit=MAX_LABEL)
    if not NAME_RE.match(name):
        top.fail("name", f"expected lowercase letters, digits, '.', '_' or '-', found {name!r}")

    t = _Reader(origin, "torrent", raw.get("torrent", {}), _TORRENT)
    torrent = TorrentFacts(
        name=t.text("name"),
        info_hash_v1=t.hexdigest("info_hash_v1"),
        info_hash_v2=t.hexdigest("info_hash_v2"),
        magnet=t.text("magnet"),
        trackers=t.strings("trackers"),
        web_seeds=t.strings("web_seeds"),
        files_complete=bool(t.get("files_complete", bool)),
    )
    if torrent.magnet is not None:
        try:
            named = parse_magnet(torrent.magnet).info_hash_v1
        except InvalidInputError as exc:
            named = None
            t.fail("magnet", f"expected a magnet:?xt=urn:btih:... link, found {torrent.magnet!r} ({exc})")
        if named is None:
            t.fail("magnet", f"expected a magnet:?xt=urn:btih:... link, found {torrent.magnet!r}")
        if torrent.info_hash_v1 and torrent.info_hash_v1 != named:
            t.fail("magnet", f"names info-hash {named}, but info_hash_v1 is {torrent.info_hash_v1}")

    files: list[FileFacts] = []
    listed: set[str] = set()
    for i, entry in enumerate(top.tables("files", MAX_FILES)):
        f = _Reader(origin, f"files[{i}]", entry, _FILE)
        path = _safe_relative(f, "path", f.text("path", required=True))
        if path in listed:
            f.fail("path", f"{path!r} is listed twice")
        listed.add(path)
        files.append(FileFacts(path=path, size=f.count("size"), sha256=f.hexdigest("sha256"), md5=f.hexdigest("md5")))

    architecture = None
    if "architecture" in raw:
        if not isinstance(raw["architecture"], dict):
            top.fail("architecture", "expected a table of params.json fields")
        architecture = architecture_from_mapping(raw["architecture"], f"{origin}: field 'architecture'")

    checkpoint = None
    if "checkpoint" in raw:
        c = _Reader(origin, "checkpoint", raw["checkpoint"], _CHECKPOINT)
        checkpoint = CheckpointFacts(
            tensors=c.count("tensors"), parameters=c.count("parameters"), dtype=c.text("dtype")
        )

    archives = []
    for i, entry in enumerate(top.tables("archives")):
        a = _Reader(origin, f"archives[{i}]", entry, _ARCHIVE)
        archives.append(
            ArchiveFacts(
                name=a.text("name", required=True),
                md5=a.hexdigest("md5"),
                sha256=a.hexdigest("sha256"),
                url=a.text("url"),
            )
        )

    signing_keys: tuple[str, ...] = ()
    if "signing" in raw:
        g = _Reader(origin, "signing", raw["signing"], _SIGNING)
        signing_keys = g.strings("keys")
        g.bounded("keys", list(signing_keys), MAX_KEYS)
        for i, key in enumerate(signing_keys):
            if not (_FINGERPRINT.fullmatch(key) or _PEM.fullmatch(key)):
                g.fail(
                    f"keys[{i}]",
                    "expected a PEM public key (-----BEGIN PUBLIC KEY-----) or sha256:HEX, its fingerprint "
                    "(`m7b release sign` prints it)",
                )

    sources_raw = raw.get("sources", {})
    s = _Reader(origin, "sources", sources_raw, set(sources_raw) if isinstance(sources_raw, dict) else set())
    sources = {k: s.text(k) or "" for k in sources_raw}
    manifest = Manifest(
        name=name,
        title=top.text("title", required=True, limit=MAX_LABEL),
        publisher=top.text("publisher", required=True, limit=MAX_LABEL),
        license=top.text("license", required=True, limit=MAX_LABEL),
        release_date=top.get("release_date", dt.date),
        torrent=torrent,
        files=tuple(files),
        architecture=architecture,
        checkpoint=checkpoint,
        archives=tuple(archives),
        signing_keys=signing_keys,
        sources=sources,
        origin=Path(origin),
    )
    missing = [fact for fact in fact_paths(manifest) if fact not in sources]
    if missing:
        s.fail(missing[0], "every fact needs a source: add where this fact comes from")
    return manifest


def fact_paths(manifest: Manifest) -> list[str]:
    """The facts a manifest states, by the path its `sources` table uses for them."""
    facts = ["release"]
    if manifest.torrent != TorrentFacts():
        facts.append("torrent")
    facts += [f"files.{f.path}" for f in manifest.files if (f.size, f.sha256, f.md5) != (None, None, None)]
    if manifest.architecture is not None:
        facts.append("architecture")
    if manifest.checkpoint is not None:
        facts.append("checkpoint")
    facts += [f"archives.{a.name}" for a in manifest.archives]
    if manifest.signing_keys:
        facts.append("signing")
    return facts


def _depth(value: Any) -> int:
    """How deep tables and lists sit inside one another in `value` (iterative: a hostile depth cannot recurse)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack += [(child, depth) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def parse_manifest_text(text: str, origin: str) -> Manifest:
    """A manifest from its TOML text, within the bounds above; InvalidInputError naming `origin` otherwise."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise InvalidInputError(
            f"{origin}: {len(text):,} characters, over the {MAX_MANIFEST_BYTES:,} a manifest may hold; "
            "no real release needs more: check that this is a manifest"
        )
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{origin}: not valid TOML ({exc})") from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise InvalidInputError(
            f"{origin}: tables or lists nested too deeply to read (a manifest nests at most {MAX_DEPTH} deep)"
        ) from exc
    if _depth(raw) > MAX_DEPTH:
        raise InvalidInputError(
            f"{origin}: tables or lists nested more than {MAX_DEPTH} deep; a manifest nests at most {MAX_DEPTH} deep"
        )
    return parse_manifest(raw, origin)


def load_manifest(path: Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"manifest {path} not found")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise InvalidInputError(f"{path}: could not read the manifest ({exc.strerror or exc})") from exc
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInputError(
            f"{path}: over {MAX_MANIFEST_BYTES:,} bytes, more than a manifest may hold; no real release needs more: "
            "check that this is a manifest"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML (not UTF-8: {exc})") from exc
    return parse_manifest_text(text, str(path))


def manifest_dirs(user_dir: Path | None = None) -> list[Path]:
    """Where manifests are looked up: the ones shipped with m7b, then the store's `manifests/` (`user_dir`: the
    caller's store names it, `Store.manifests_dir`; manifests sit below the store and never import it), then the
    folders in M7B_MANIFESTS."""
    dirs = [BUNDLED_DIR]
    if user_dir is not None and user_dir.is_dir():
        dirs.append(user_dir)
    extra = os.environ.get("M7B_MANIFESTS")
    if extra:
        dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


@dataclass(frozen=True)
class SkippedManifest:
    """A manifest file in a manifest folder that could not be used, and why: the commands that do not need it go on
    (the CLI names it in a warning)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class ManifestScan:
    found: dict[str, Manifest]
    skipped: tuple[SkippedManifest, ...]


def scan_manifests(user_dir: Path | None = None) -> ManifestScan:
    """Every manifest in the manifest folders, by release name; a file that does not load (or names a release
    another file already defined) is skipped and returned with its reason, so one broken file breaks nothing
    else. A folder that cannot be listed is skipped the same way."""
    found: dict[str, Manifest] = {}
    skipped: list[SkippedManifest] = []
    for directory in manifest_dirs(user_dir):
        try:
            paths = sorted(directory.glob("*.toml"))
        except OSError as exc:
            skipped.append(SkippedManifest(directory, f"could not list the folder ({exc.strerror or exc})"))
            continue
        for path in paths:
            try:
                manifest = load_manifest(path)
            except M7bError as exc:
                skipped.append(SkippedManifest(path, str(exc).removeprefix(f"{path}: ")))
                continue
            if manifest.name in found and found[manifest.name].origin != manifest.origin:
                skipped.append(
                    SkippedManifest(
                        path,
                        f"release name {manifest.name!r} is already defined by {found[manifest.name].origin}; "
                        "rename one of them",
                    )
                )
                continue
            found[manifest.name] = manifest
    return ManifestScan(found, tuple(skipped))


def known_manifests(user_dir: Path | None = None) -> dict[str, Manifest]:
    """The manifests `scan_manifests` finds (those it skips are left out)."""
    return scan_manifests(user_dir).found


def find_manifest(name: str, user_dir: Path | None = None) -> Manifest:
    known = known_manifests(user_dir)
    if name not in known:
        raise NotFoundError(
            f"unknown release {name!r}; known releases: {', '.join(sorted(known)) or 'none'} "
            "(see `m7b list`, or pass a manifest file)"
        )
    return known[name]
