#!/usr/bin/env bash
# Installs the Debian packages vmscope's build, tests and fixtures need.
# Idempotent: does nothing when everything is present. Waits for the dpkg lock (apt's DPkg::Lock::Timeout).
set -euo pipefail

pkgs=(
  qemu-utils          # qemu-img, qemu-io, qemu-nbd: images and the conformance reference
  libnbd-bin          # nbdinfo --map, nbdcopy: the NBD client's reference and benchmark peer
  e2fsprogs           # mkfs.ext4 -d, debugfs: fixtures and the ext4 reference
  fdisk               # sfdisk: GPT and MBR fixtures
  dosfstools mtools   # mkfs.vfat, mcopy: the FAT fixture
  sleuthkit           # fls, icat: the benchmark peer
  ntfs-3g attr        # mkntfs, ntfs-3g mount, ntfsls/ntfscat/ntfscluster, setfattr: the NTFS fixture (testdata/ntfs) and its reference
  zstd                # qemu-img's zstd compression is built in; zstd for checks
  libyara-dev yara    # YARA: the scan engine and its reference
  libmagic-dev libjansson-dev libssl-dev zlib1g-dev libbz2-dev liblzma-dev  # static libraries for make static
  pkg-config
  busybox-static      # the guest fixture's initramfs
  qemu-system-x86     # the guest fixture
  libvirt-daemon-system libvirt-clients  # libvirt: guests by domain name (testdata/libvirt, vmi/qemu/libvirt)
  makedumpfile        # the guest fixture: kdump files written by makedumpfile -c / -l
  gcc-12 make         # the guest fixture: LiME built against the guest kernel's headers
  cpio
  chromium            # headless browser: the HTML report test (cmd/vmscope TestReportInChromium)
  gcc gcc-mingw-w64-x86-64  # ELF and PE fixtures of the module-aware scan (testdata/modules)
  parallel            # fleet: the GNU parallel recipe (deploy/parallel) and bench/fleet.sh's peer
  slurm-wlm munge     # fleet: a single-node Slurm cluster runs the job array of the fleet test
  lvm2                # pvcreate, vgcreate, lvcreate, lvs, pvck: the LVM fixtures and their reference (testdata/lvm)
  cryptsetup-bin      # cryptsetup luksFormat, luksDump: the LUKS fixtures and their reference (testdata/lvm)
  xfsprogs            # mkfs.xfs -p, xfs_io, xfs_db: the XFS fixtures and reference (testdata/xfs)
  attr                # setfattr: extended attributes of the XFS fixture (testdata/xfs)
  libc6-dev           # testdata/inject: the static dummy and seccomp-strict programs (gcc -static)
  dmsetup             # testdata/gdirty: dmsetup and its libraries in the guest initramfs (the LV of the XFS ground truth)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# apt waits for the dpkg and list locks itself (up to 10 minutes).
lock=(-o DPkg::Lock::Timeout=600)
$SUDO apt-get "${lock[@]}" update -qq
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}"
