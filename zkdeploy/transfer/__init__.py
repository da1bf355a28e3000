"""Moving release payloads onto a host: origin fetch, the torrent swarm, safe unpacking.

The only package that imports libtorrent.
"""
