"""A plain libtorrent client for benchmarks: `seed TORRENT SAVE_PATH` or `fetch MAGNET DEST [PEER_PORT]`.

Only what a loopback swarm needs is changed from libtorrent's defaults: no DHT/LSD/UPnP/NAT-PMP (no network
here), outgoing TCP instead of uTP (uTP is ~25x slower on loopback), and several peers per IP (all leechers
are 127.0.0.1). Prints one JSON line when seeding starts (seed) or when the download completes (fetch).
"""

from __future__ import annotations

import json
import sys
import time

import libtorrent as lt

LOOPBACK = {
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
}


def main() -> None:
    mode, source, path = sys.argv[1:4]
    peer = int(sys.argv[4]) if len(sys.argv) > 4 else None
    session = lt.session(LOOPBACK)
    if mode == "seed":
        atp = lt.add_torrent_params()
        atp.ti = lt.torrent_info(source)
    else:
        atp = lt.parse_magnet_uri(source)
    atp.save_path = path
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    handle = session.add_torrent(atp)
    if peer:
        handle.connect_peer(("127.0.0.1", peer))
    start = time.monotonic()
    while True:
        time.sleep(0.05)
        session.pop_alerts()
        status = handle.status()
        if mode == "seed" and status.is_seeding:
            print(json.dumps({"port": session.listen_port()}), flush=True)
            while True:
                time.sleep(1)
        if mode == "fetch" and status.is_finished and handle.has_metadata():
            print(json.dumps({"seconds": time.monotonic() - start, "bytes": status.total_wanted}), flush=True)
            return


if __name__ == "__main__":
    main()
