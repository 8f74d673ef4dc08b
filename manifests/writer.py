"""Write a Manifest as TOML (the schema's subset of TOML: strings, integers, floats, booleans, dates, lists)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from .loader import SCHEMA_VERSION
from .schema import Manifest


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _table(header: str, fields: dict[str, Any]) -> list[str]:
    lines = [header]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in fields.items() if v is not None and v != ()]
    return lines + [""]


def manifest_to_toml(m: Manifest) -> str:
    lines = ["# m7b release manifest: what the publisher vouches for. Unknown facts are absent, never guessed.", ""]
    lines += _table(
        "",
        {
            "schema": SCHEMA_VERSION,
            "name": m.name,
            "title": m.title,
            "publisher": m.publisher,
            "release_date": m.release_date,
            "license": m.license,
        },
    )[1:]
    t = m.torrent
    lines += _table(
        "[torrent]",
        {
            "name": t.name,
            "info_hash_v1": t.info_hash_v1,
            "info_hash_v2": t.info_hash_v2,
            "magnet": t.magnet,
            "trackers": t.trackers,
            "web_seeds": t.web_seeds,
            "files_complete": t.files_complete,
        },
    )
    for f in m.files:
        lines += _table("[[files]]", {"path": f.path, "size": f.size, "sha256": f.sha256, "md5": f.md5})
    if m.architecture is not None:
        params = m.architecture.to_params()
        moe = params.pop("moe", None)
        lines += _table("[architecture]", params)
        if moe is not None:
            lines += _table("[architecture.moe]", moe)
    if m.checkpoint is not None:
        c = m.checkpoint
        lines += _table("[checkpoint]", {"tensors": c.tensors, "parameters": c.parameters, "dtype": c.dtype})
    for a in m.archives:
        lines += _table("[[archives]]", {"name": a.name, "md5": a.md5, "sha256": a.sha256, "url": a.url})
    if m.signing_keys:
        lines += _table("[signing]", {"keys": m.signing_keys})
    if m.sources:
        lines += _table("[sources]", m.sources)
    return "\n".join(lines).rstrip("\n") + "\n"
