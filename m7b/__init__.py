"""m7b: fetch, verify, convert, run and seed a torrent-released open-weights model."""

__version__ = "0.1.0"
