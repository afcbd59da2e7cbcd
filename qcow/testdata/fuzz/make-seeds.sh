#!/bin/sh
# Rebuilds the tiny qcow2 seeds of FuzzHeader and FuzzTables with qemu-img
# and qemu-io (4 KiB clusters, 256 KiB disks; < 100 KB in all).
set -eu
cd "$(dirname "$0")"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
qemu-img create -f qcow2 -o cluster_size=4k "$t/s.qcow2" 256k
qemu-io -c 'write -P 0x41 0 8k' -c 'write -z 64k 4k' -c 'write -P 0x42 130k 10k' "$t/s.qcow2"
qemu-img convert -O qcow2 -c -o cluster_size=4k,compression_type=zstd "$t/s.qcow2" small-zstd.qcow2
qemu-img convert -O qcow2 -c -o cluster_size=4k,compat=0.10 "$t/s.qcow2" small-v2-zlib.qcow2
cp "$t/s.qcow2" small.qcow2
