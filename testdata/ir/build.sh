#!/usr/bin/env bash
# Builds the incident-response fixtures (timeline, deleted and orphan
# files) with the real tools into testdata/out-ir (git-ignored), a link to
# a cache folder named by this script's hash.
#
#   realtree.img     mkfs.ext4 -d of a copy of this machine's /etc, plus files with
#                    setuid/setgid/sticky modes, a fifo and a character device
#                    (the timeline reference: fls -r -m /)
#   del-debugfs.img  a tree from which debugfs deleted files and directories:
#                    rm (name and inode freed), kill_file (inode freed, name kept),
#                    unlink (name removed, inode kept: an orphan), rmdir, and entries
#                    of an htree directory; then wrote new files that reuse freed inodes
#   del-kernel.img   the same tree, mounted by this machine's kernel (loop device) and
#                    changed there: report.txt appended to (27 bytes) and touched to
#                    2020-05-06 07:08:09 UTC, docs/draft.txt made, synced; then rm, rm -r, mv, new files; synced
#                    and unmounted (the journal keeps the first transactions' copies)
#   orphan-dir.img   directories made orphans by debugfs: /odir (holding a.txt and
#                    inner/b.txt, and inner/loop, a second name for /odir) and /odir2
#                    (holding c.txt) unlinked, their names overwritten by new files,
#                    then odir, odir/inner and odir2 freed (kill_file): fls -r lists each
#                    under $OrphanFiles with what it holds
#   kept/            the content of every deleted file before its deletion (by name)
#   tree/            the source tree of both del-*.img
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PATH=$PATH:/usr/sbin:/sbin

hash=$(cat "$here/build.sh" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/ir-$hash
out=$repo/testdata/out-ir
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ -f "$cache/.done" ]; then
  if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
    rm -rf "$out"
    ln -s "$cache" "$out"
  fi
  exit 0
fi
for tool in mkfs.ext4 debugfs e2fsck mount losetup; do
  command -v "$tool" >/dev/null || { echo "testdata/ir/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
mkfs() { mkfs.ext4 -q -F -E root_owner=0:0 "$@" 2>&1 | grep -v '^Creating regular file' >&2 || true; }

# --- realtree.img: this machine's /etc and a few odd modes ---
mkdir -p realtree
cp -a /etc realtree/etc 2>/dev/null || true
find realtree -type s -delete
mkdir -p realtree/odd/sgid realtree/odd/sticky
printf 'suid\n' > realtree/odd/suid; chmod 4755 realtree/odd/suid
printf 'suid-nox\n' > realtree/odd/suid-nox; chmod 4644 realtree/odd/suid-nox
chmod 2775 realtree/odd/sgid; chmod 1777 realtree/odd/sticky
mkfifo realtree/odd/fifo
mknod realtree/odd/null c 1 3
mknod realtree/odd/loop b 7 0
touch -d '2001-02-03 04:05:06.123456789' realtree/odd/suid
mkfs -t ext4 -b 4096 -U 9a3c1f0e-7d2b-4c55-8e61-2b0c7a1d4e01 -d realtree realtree.img 64M
rm -rf realtree

# --- the tree both deletion images start from ---
mkdir -p tree/docs tree/olddir/sub tree/big tree/keep
line() { i=0; while [ $i -lt "$2" ]; do printf '%s line %06d of the kept content\n' "$1" $i; i=$((i+1)); done; }
line report 600 > tree/docs/report.txt      # ~24 KiB, extents
line notes 40 > tree/docs/notes.txt
line orphan 300 > tree/docs/orphan.bin
line small 3 > tree/docs/small.txt
line inner 100 > tree/olddir/inner.txt
line deeper 50 > tree/olddir/sub/deeper.txt
line keep 10 > tree/keep/live.txt
for i in $(seq -w 0 399); do printf 'big %s\n' "$i" > "tree/big/file-with-a-long-name-$i"; done
cp -a tree kept

# --- del-debugfs.img ---
mkfs -t ext4 -b 4096 -U 5b0e8d3a-1f2c-4e6d-9a7b-3c4d5e6f7a80 -E hash_seed=5b0e8d3a-1f2c-4e6d-9a7b-3c4d5e6f7a80 -d tree del-debugfs.img 32M
e2fsck -fyD del-debugfs.img >/dev/null 2>&1 || true   # htree for /big
{
  echo "rm /docs/report.txt"
  echo "kill_file /docs/notes.txt"
  echo "unlink /docs/orphan.bin"
  echo "rm /olddir/sub/deeper.txt"
  echo "rmdir /olddir/sub"
  echo "rm /olddir/inner.txt"
  echo "rmdir /olddir"
  for i in 010 011 012 200 201 399; do echo "rm /big/file-with-a-long-name-$i"; done
  echo "write /dev/null /keep/new-after-delete"
} | debugfs -w -f - del-debugfs.img >/dev/null 2>&1

# --- del-kernel.img: a real kernel deletes ---
mkfs -t ext4 -b 4096 -U 6c1f9e4b-2a3d-4f7e-8b9c-4d5e6f7a8b91 -E hash_seed=6c1f9e4b-2a3d-4f7e-8b9c-4d5e6f7a8b91 -d tree del-kernel.img 32M
e2fsck -fyD del-kernel.img >/dev/null 2>&1 || true
mnt=$(mktemp -d)
mount -o loop,rw del-kernel.img "$mnt"
trap 'umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true' EXIT
# A first transaction the journal keeps: report.txt grows by a line and is
# touched to a known time, then synced (the journal's copies of its inode
# and of /docs then hold the older state the deletes below change).
printf 'appended before the delete\n' >> "$mnt/docs/report.txt"
printf 'a draft, deleted later\n' > "$mnt/docs/draft.txt"
touch -d '2020-05-06 07:08:09' "$mnt/docs/report.txt"
sync
rm "$mnt/docs/report.txt" "$mnt/docs/notes.txt" "$mnt/docs/draft.txt"
rm -r "$mnt/olddir"
for i in 010 011 012 200 201 399; do rm "$mnt/big/file-with-a-long-name-$i"; done
mv "$mnt/docs/small.txt" "$mnt/keep/small-moved.txt"
sync
printf 'written after the deletes\n' > "$mnt/keep/new-after-delete"
sync
umount "$mnt"
rmdir "$mnt"
trap - EXIT

# --- orphan-dir.img: directories no name reaches, freed with their blocks mapped ---
mkdir -p otree/keep otree/odir/inner otree/odir2
echo hello > otree/odir/a.txt; echo world > otree/odir/inner/b.txt
echo x > otree/odir2/c.txt; echo k > otree/keep/k.txt
touch -d '2021-03-04 05:06:07' otree/odir/a.txt
mkfs -t ext4 -b 4096 -U 7d2a0b5c-3b4e-4a8f-9cad-5e6f7a8b9ca2 -d otree orphan-dir.img 8M
rm -rf otree
ino() { debugfs -R "stat $1" orphan-dir.img 2>/dev/null | awk '/^Inode:/ {print $2; exit}'; }
odir=$(ino /odir); inner=$(ino /odir/inner); odir2=$(ino /odir2)
{
  echo "cd /odir/inner"; echo "link <$odir> loop"; echo "cd /"
  echo "unlink /odir"; echo "unlink /odir2"
  for i in $(seq 1 12); do echo "write /dev/null /newfile-with-a-fairly-long-name-$i"; done
  echo "kill_file <$odir2>"; echo "kill_file <$odir>"; echo "kill_file <$inner>"
} | debugfs -w -f - orphan-dir.img >/dev/null 2>&1

touch .done
ln -sfn "$cache" "$out.tmp" && mv -T "$out.tmp" "$out"
