#!/usr/bin/env bash
# Builds the LVM2 and LUKS fixtures into testdata/out-lvm (git-ignored; a
# link to a cache folder named by the hash of this script and of blkdiff),
# with the real tools: losetup, pvcreate/vgcreate/lvcreate (activation off:
# no device-mapper is needed), mkfs.ext4 -d, debugfs, cryptsetup, qemu-img,
# qemu-io. Needs root (loop devices); every loop device is detached on exit.
#
#   lvm-gpt.img      GPT disk: p1 and p2 are the PVs of VG vg0, p3 a LUKS1 volume.
#                    vg0/root   ext4 of tree/ (32 MiB) in 3 linear segments:
#                               p1 extents 0-7, p1 12-27 (extended after vault), p2 0-7
#                    vg0/vault  LUKS2 (4 MiB) on p1 extents 8-11
#                    vg0/stripes striped over p1 and p2 (2 stripes): unsupported
#   lvm-gpt.qcow2    qemu-img convert of lvm-gpt.img
#   lvm-overlay.qcow2 overlay of lvm-gpt.qcow2 holding exactly the blocks that
#                    root-changed.img changes (debugfs: see changed.txt)
#   lvm-whole.img    a PV on the whole disk (no table): VG solo, LV solo/data (ext4 of tree-small/)
#   multi-a.img multi-b.img  two disks, a PV on each: VG span; span/data (ext4 of tree-multi/,
#                    multi-data.img) on a extents 0-5 then b extents 0-7; span/local (small.img) on a
#   root.img root-changed.img small.img   the ext4 images written into the LVs
#   luks1.img luks2.img                   cryptsetup luksFormat on plain files (2 keyslots each)
# References: lvs.json pvs.json vgs.json (--reportformat json), pvck.txt
# (pvck --dump metadata of p1), devices.txt (loop device -> partition of lvm-gpt.img),
# luks1.dump luks2.dump (cryptsetup luksDump), whole-lvs.json.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$(dirname "$here")")
PATH=$PATH:/usr/sbin:/sbin

hash=$(cat "$here/build.sh" "$repo/testdata/blkdiff/main.go" | sha256sum | cut -c1-16)
cache=${VMSCOPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmscope}/lvm-$hash
out=$repo/testdata/out-lvm
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

for tool in losetup pvcreate vgcreate lvcreate lvextend lvs pvs vgs pvck cryptsetup mkfs.ext4 debugfs sfdisk qemu-img qemu-io; do
  command -v "$tool" >/dev/null || { echo "lvm/build.sh: $tool missing (run scripts/deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "lvm/build.sh: needs root (loop devices)" >&2; exit 1; }

find "$(dirname "$cache")" -maxdepth 1 -name 'lvm-*' ! -name "lvm-$hash" ! -name '*.lock' -mtime +7 -exec rm -rf {} + 2>/dev/null || true
rm -rf "$cache"
mkdir -p "$cache"
cd "$cache"
log() { printf 'lvm: %s\n' "$*" >&2; }

loops=()
cleanup() {
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
}
trap cleanup EXIT
attach() { # attach FILE OFFSET SIZE: the loop device in $LOOP (no subshell: cleanup must see it)
  LOOP=$(losetup -f --show -o "$2" --sizelimit "$3" "$1")
  loops+=("$LOOP")
}
# LVM sees only our loop devices, and writes no backup or archive under /etc.
lvmconf() {
  local f=""
  for l in "$@"; do f="$f\"a|^$l\$|\", "; done
  echo "global { activation = 0 } devices { filter = [ $f\"r|.*|\" ] global_filter = [ $f\"r|.*|\" ] scan = [ \"/dev\" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 } backup { backup = 0 archive = 0 }"
}
lv() { # lv CMD ARGS...: an LVM command with our config, quiet
  local cmd=$1
  shift
  "$cmd" --config "$CONF" "$@" 2> >(grep -v -E 'WARNING: (Activation disabled|Logical volume .* not zeroed|This metadata update is NOT backed up)|leaked on' >&2)
}

log "trees and ext4 images"
rm -rf tree tree-small
mkdir -p tree/etc/cron.d tree/data tree/home/user tree-small/etc
printf 'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n' > tree/etc/passwd
printf 'lvm-guest\n' > tree/etc/hostname
printf 'welcome to the LV\n' > tree/etc/motd
printf '* * * * * root /tmp/.x # VMSCOPE_MARKER_LVM\n' > tree/etc/cron.d/job
printf 'notes\n' > tree/home/user/notes.txt
# 20 MiB of distinct lines: the file spans every segment of the LV.
(set +o pipefail; seq 1 4000000 | head -c 20971520) > tree/data/big.txt
for i in $(seq 1 40); do printf 'file %d\n' "$i" > "tree/data/f$i.txt"; done
printf 'solo\n' > tree-small/etc/hostname
mkfs.ext4 -q -F -E root_owner=0:0 -U 6a0c3f2e-1b4d-4e5f-8a9b-0c1d2e3f4a5b -L lvroot -b 4096 -d tree root.img 32M
mkfs.ext4 -q -F -E root_owner=0:0 -U 7b1d4f3e-2c5e-4f60-9bac-1d2e3f4a5b6c -b 4096 -d tree-small small.img 4M
rm -rf tree-multi
mkdir -p tree-multi/etc tree-multi/data
printf 'multi\n' > tree-multi/etc/hostname
(set +o pipefail; seq 5000000 6000000 | head -c 9437184) > tree-multi/data/big.txt
mkfs.ext4 -q -F -E root_owner=0:0 -U 8c2e5f4e-3d6f-4071-8cbd-2e3f4a5b6c7d -b 4096 -d tree-multi multi-data.img 14M
cp root.img root-changed.img
printf 'added in the overlay\n' > added.txt
printf 'changed motd\n' > motd2.txt
debugfs -w -f - root-changed.img >/dev/null 2>&1 <<'CMDS'
rm /etc/motd
write motd2.txt /etc/motd
write added.txt /etc/added.txt
rm /etc/hostname
CMDS
# /etc/motd keeps its inode (the lowest free one when it is rewritten).
printf 'added /etc/added.txt\ndeleted /etc/hostname\nmodified /etc/motd\n' > changed.txt
e2fsck -fn root-changed.img >/dev/null

log "luks"
printf 'vmscope-test-passphrase' > key1
printf 'second-key' > key2
fmt_luks() { # fmt_LUKS IMG TYPE ARGS...
  local img=$1 typ=$2
  shift 2
  rm -f "$img"
  truncate -s 4M "$img"
  cryptsetup luksFormat -q --batch-mode --type "$typ" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file key1 "$@" "$img"
  cryptsetup luksAddKey -q --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file key1 "$img" key2
  cryptsetup luksDump "$img" > "${img%.img}.dump"
}
fmt_luks luks1.img luks1 --cipher aes-xts-plain64 --key-size 512 --hash sha256
fmt_luks luks2.img luks2 --cipher aes-cbc-essiv:sha256 --key-size 256 --luks2-metadata-size 16k --luks2-keyslots-size 512k --offset 4096 --label vault

log "lvm-gpt.img"
rm -f lvm-gpt.img
truncate -s 96M lvm-gpt.img
sfdisk -q lvm-gpt.img <<'PT'
label: gpt
label-id: 3E0B2C1A-5D4F-4A6B-8C7D-9E0F1A2B3C4D
start=2048, size=81920, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name="pv-a"
start=83968, size=65536, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, name="pv-b"
start=149504, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="secret"
PT
P1=$((2048 * 512)) P2=$((83968 * 512)) P3=$((149504 * 512))
attach lvm-gpt.img $P1 $((81920 * 512))
A=$LOOP
attach lvm-gpt.img $P2 $((65536 * 512))
B=$LOOP
CONF=$(lvmconf "$A" "$B")
printf '%s p1 %d\n%s p2 %d\n' "$A" "$P1" "$B" "$P2" > devices.txt
lv pvcreate -q "$A" "$B" >/dev/null
lv vgcreate -q -s 1M vg0 "$A" "$B" >/dev/null
lv lvcreate -q -Zn -Wn -L 8M -n root vg0 "$A" >/dev/null
lv lvcreate -q -Zn -Wn -L 4M -n vault vg0 "$A" >/dev/null
lv lvextend -q -L +16M vg0/root "$A" >/dev/null
lv lvextend -q -L +8M vg0/root "$B" >/dev/null
lv lvcreate -q -Zn -Wn -i 2 -I 64k -L 4M -n stripes vg0 "$A" "$B" >/dev/null
lv lvs --reportformat json -a -o lv_name,vg_name,lv_uuid,segtype,seg_start_pe,seg_size_pe,seg_pe_ranges,lv_size,stripes --units b > lvs.json
lv pvs --reportformat json -o pv_name,pv_uuid,vg_name,pe_start,pv_pe_count,dev_size --units b > pvs.json
lv vgs --reportformat json -o vg_name,vg_uuid,vg_seqno,vg_extent_size,pv_count,lv_count --units b > vgs.json
lv pvck --dump metadata "$A" > pvck.txt
# write_lv IMG LVIMAGE VG/LV DEVICES: the LV image at the extents lvs
# reports (DEVICES: lines "loopdev id offset-in-IMG" for the PVs in IMG)
write_lv() {
  local img=$1 src=$2 name=$3 devs=$4 pestart
  lv lvs --noheadings --separator '|' -o seg_start_pe,seg_pe_ranges "$name" | while IFS='|' read -r lstart ranges; do
    lstart=$(echo "$lstart" | tr -d ' ')
    dev=${ranges%%:*}; dev=$(echo "$dev" | tr -d ' ')
    r=${ranges#*:}; first=${r%-*}; last=${r#*-}
    base=$(awk -v d="$dev" '$1 == d { print $3 }' "$devs")
    [ -n "$base" ] || continue # a PV of another image
    pestart=$(lv pvs --noheadings --units b --nosuffix -o pe_start "$dev" | tr -d ' ')
    dd if="$src" of="$img" bs=1M skip="$lstart" seek=$(( (base + pestart) / 1048576 + first )) count=$((last - first + 1)) conv=notrunc status=none
  done
}
write_lv lvm-gpt.img root.img vg0/root devices.txt
write_lv lvm-gpt.img luks2.img vg0/vault devices.txt
cp --sparse=always lvm-gpt.img lvm-gpt-changed.img
write_lv lvm-gpt-changed.img root-changed.img vg0/root devices.txt
dd if=luks1.img of=lvm-gpt.img bs=512 seek=149504 conv=notrunc status=none
dd if=luks1.img of=lvm-gpt-changed.img bs=512 seek=149504 conv=notrunc status=none
cleanup
loops=()

log "lvm-whole.img"
rm -f lvm-whole.img
truncate -s 16M lvm-whole.img
attach lvm-whole.img 0 $((16 << 20))
W=$LOOP
CONF=$(lvmconf "$W")
printf '%s disk 0\n' "$W" > whole-devices.txt
lv pvcreate -q "$W" >/dev/null
lv vgcreate -q -s 1M solo "$W" >/dev/null
lv lvcreate -q -Zn -Wn -L 1M -n gap solo >/dev/null
lv lvcreate -q -Zn -Wn -L 2M -n data solo >/dev/null
lv lvremove -q -f solo/gap >/dev/null
lv lvextend -q -L +2M solo/data >/dev/null
lv lvs --reportformat json -a -o lv_name,vg_name,lv_uuid,segtype,seg_start_pe,seg_size_pe,seg_pe_ranges,lv_size --units b > whole-lvs.json
write_lv lvm-whole.img small.img solo/data whole-devices.txt
cleanup
loops=()

log "multi-a.img multi-b.img"
# VG span over two disks: span/data has extents on both, span/local on a only.
rm -f multi-a.img multi-b.img
truncate -s 24M multi-a.img
truncate -s 16M multi-b.img
attach multi-a.img 0 $((24 << 20))
MA=$LOOP
attach multi-b.img 0 $((16 << 20))
MB=$LOOP
CONF=$(lvmconf "$MA" "$MB")
printf '%s disk 0\n' "$MA" > multi-a-devices.txt
printf '%s disk 0\n' "$MB" > multi-b-devices.txt
lv pvcreate -q "$MA" "$MB" >/dev/null
lv vgcreate -q -s 1M span "$MA" "$MB" >/dev/null
lv lvcreate -q -Zn -Wn -L 6M -n data span "$MA" >/dev/null
lv lvcreate -q -Zn -Wn -L 4M -n local span "$MA" >/dev/null
lv lvextend -q -L +8M span/data "$MB" >/dev/null
lv lvs --reportformat json -a -o lv_name,vg_name,lv_uuid,segtype,seg_start_pe,seg_size_pe,seg_pe_ranges,lv_size --units b > multi-lvs.json
write_lv multi-a.img multi-data.img span/data multi-a-devices.txt
write_lv multi-b.img multi-data.img span/data multi-b-devices.txt
write_lv multi-a.img small.img span/local multi-a-devices.txt
cleanup
loops=()

log "qcow2 and overlay"
qemu-img convert -f raw -O qcow2 lvm-gpt.img lvm-gpt.qcow2
qemu-img create -q -f qcow2 -b lvm-gpt.qcow2 -F qcow2 lvm-overlay.qcow2
(cd "$repo" && go run ./testdata/blkdiff "$cache/lvm-gpt.img" "$cache/lvm-gpt-changed.img" "$cache/chunks") > writes.txt
args=()
while read -r line; do args+=(-c "$line"); done < writes.txt
qemu-io -f qcow2 "${args[@]}" lvm-overlay.qcow2 >/dev/null
rm -rf chunks lvm-gpt-changed.img key1 key2 added.txt motd2.txt

touch .done
if [ "$(readlink "$out" 2>/dev/null)" != "$cache" ]; then
  rm -rf "$out"
  ln -s "$cache" "$out"
fi
log "done: $cache"
