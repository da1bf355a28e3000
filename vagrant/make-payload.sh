#!/usr/bin/env bash
# Build the lab's payload for `hello` VERSION: a tar.gz whose www/version.txt
# says the version.  Usage: make-payload.sh VERSION [OUTDIR]
# Default OUTDIR is payloads/ beside this script; build it on the host, then
# `vagrant rsync` copies it to /vagrant/vagrant/payloads on every VM.
set -euo pipefail
version="${1:?usage: make-payload.sh VERSION [OUTDIR]}"
out="${2:-$(cd "$(dirname "$0")" && pwd)/payloads}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/www" "$out"
printf '%s\n' "$version" > "$work/www/version.txt"
printf '<h1>hello %s</h1>\n' "$version" > "$work/www/index.html"
tar -C "$work" -czf "$out/hello-$version.tar.gz" www
chmod 0644 "$out/hello-$version.tar.gz"
echo "$out/hello-$version.tar.gz"
