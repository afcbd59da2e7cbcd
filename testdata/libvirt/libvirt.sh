#!/usr/bin/env bash
# The libvirt fixture: Debian's libvirt (libvirt-daemon-system, libvirt-clients,
# scripts/deps.sh) started without systemd, and transient type='qemu' domains
# booting the real-guest fixture (testdata/guest/build.sh: vmlinuz, initrd.gz).
#
#   bash testdata/libvirt/libvirt.sh daemon   start virtlogd and libvirtd, or reuse
#                                             the ones this script started; prints
#                                             "libvirtd PID reused|started"
#   bash testdata/libvirt/libvirt.sh images   copy the kernel and initramfs where
#                                             libvirt-qemu can read them; prints the dir
#   bash testdata/libvirt/libvirt.sh boot     daemon + images, then one transient
#                                             domain: start, wait for READY on its
#                                             serial console, destroy; prints timings
#
# libvirtd runs in a private mount namespace with an empty root-only file bound
# over /dev/kvm (unshare -m ... mount --bind FILE /dev/kvm): on this machine
# /dev/kvm exists but is unusable, and libvirt then re-probes QEMU on each domain
# start (~50 s). Binding /dev/null instead (as first measured) still re-probed on
# every start here (~30 s): /dev/null is accessible to libvirt-qemu, so libvirt
# takes KVM for usable, and its ctime changes as domains start. A libvirtd started otherwise (by
# systemd, or by hand without the namespace) is detected and refused, with the
# reason, rather than used: its domain starts would take ~50 s each.
#
# Nothing here is cached: the daemon is a process, the images a copy (by hash).
set -euo pipefail
export LC_ALL=C
PATH=$PATH:/usr/sbin:/sbin
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
guest=${VMSCOPE_GUEST:-$repo/testdata/out-guest}
sock=/run/libvirt/libvirt-sock
state=/run/vmscope-libvirt          # what this script started
images=/var/lib/libvirt/images/vmscope

die() { echo "libvirt.sh: $*" >&2; exit 1; }

# kvm_hidden PID: is /dev/kvm of PID's mount namespace something else than the
# host's KVM device (char 10:232)?
kvm_hidden() {
  local t
  t=$(nsenter -t "$1" -m stat -c '%F %t:%T' /dev/kvm 2>/dev/null) || return 1
  [ "$t" != "character special file a:e8" ]
}

# running NAME: the pid of a running (not zombie) NAME, if any.
running() {
  local p
  for p in $(pgrep -x "$1"); do
    [ "$(ps -o stat= -p "$p" 2>/dev/null | cut -c1)" = Z ] || { echo "$p"; return 0; }
  done
  return 1
}

wait_socket() {
  local i
  for i in $(seq 1 100); do
    if [ -S "$sock" ] && virsh -q -c qemu:///system version >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  die "libvirtd did not answer on $sock within 10 s"
}

daemon() {
  command -v libvirtd >/dev/null || die "libvirtd missing: bash scripts/deps.sh (libvirt-daemon-system)"
  command -v virsh >/dev/null || die "virsh missing: bash scripts/deps.sh (libvirt-clients)"
  mkdir -p "$state"
  exec 8>"$state/lock"
  flock 8
  local pid
  pid=$(running libvirtd || true)
  if [ -n "$pid" ]; then
    if [ -e /dev/kvm ] && ! kvm_hidden "$pid"; then
      die "libvirtd $pid was started otherwise (its /dev/kvm is the host's): each domain start would re-probe QEMU (~50 s here); stop it (kill $pid) and rerun, and this script starts one in a private mount namespace"
    fi
    if [ "$(cat "$state/libvirtd.pid" 2>/dev/null)" != "$pid" ]; then
      echo "libvirt.sh: libvirtd $pid was not started by this script but hides /dev/kvm like it: reused" >&2
    fi
    wait_socket
    echo "libvirtd $pid reused"
    return 0
  fi
  # virtlogd writes the domain logs (/var/log/libvirt/qemu/DOM.log); libvirtd
  # refuses to start a domain without it.
  if ! running virtlogd >/dev/null; then
    virtlogd -d 8>&-
  fi
  if [ -e /dev/kvm ]; then
    # Not /dev/null itself: libvirt stats /dev/kvm on each domain start and
    # re-probes QEMU (~30 s here) when its ctime changed or libvirt-qemu can
    # open it; /dev/null is writable by all and its ctime moves when a domain
    # starts. A null device node of our own (another inode), root-only, is
    # neither (a regular file is refused: libvirt moves /dev's submounts into
    # each domain's private /dev).
    rm -f "$state/no-kvm"
    mknod -m 0000 "$state/no-kvm" c 1 3
    unshare -m --propagation private sh -c "mount --bind '$state/no-kvm' /dev/kvm && exec libvirtd -d" 8>&-
  else
    libvirtd -d 8>&-
  fi
  wait_socket
  pid=$(running libvirtd) || die "libvirtd exited"
  echo "$pid" >"$state/libvirtd.pid"
  echo "libvirtd $pid started"
}

# images: the fixture's kernel and initramfs where libvirt-qemu may read them
# (root's cache is not), in a folder named by their hash; prints it.
images() {
  [ -f "$guest/vmlinuz" ] && [ -f "$guest/initrd.gz" ] ||
    die "guest fixture missing in $guest: bash testdata/guest/build.sh"
  local h dir
  h=$(cat "$guest/vmlinuz" "$guest/initrd.gz" | sha256sum | cut -c1-16)
  dir=$images/$h
  if [ ! -f "$dir/initrd.gz" ]; then
    mkdir -p "$images"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    cp "$guest/vmlinuz" "$guest/initrd.gz" "$dir.tmp/"
    chmod 0755 "$dir.tmp"
    chmod 0644 "$dir.tmp"/*
    mv "$dir.tmp" "$dir" 2>/dev/null || rm -rf "$dir.tmp"
  fi
  echo "$dir"
}

ms() { date +%s%3N; }

boot() {
  daemon >&2
  local img name run xml t0 t1 t2
  img=$(images)
  name=vmscope-sh-$$
  run=/var/lib/libvirt/qemu/vmscope-$name
  mkdir -p "$run"
  chown libvirt-qemu:kvm "$run"
  # (expanded now: the trap runs after the function's locals are gone)
  trap "rm -rf '$run'" EXIT
  xml=$run/domain.xml
  cat >"$xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$img/vmlinuz</kernel>
    <initrd>$img/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='$run/console.log'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
  t0=$(ms)
  virsh -q -c qemu:///system create "$xml" >/dev/null
  t1=$(ms)
  trap "virsh -q -c qemu:///system destroy '$name' >/dev/null 2>&1 || true; rm -rf '$run'" EXIT
  local i
  for i in $(seq 1 3000); do
    grep -q '=== READY ===' "$run/console.log" 2>/dev/null && break
    virsh -q -c qemu:///system domstate "$name" 2>/dev/null | grep -q running || die "domain $name stopped before READY"
    sleep 0.1
  done
  grep -q '=== READY ===' "$run/console.log" || die "no READY from $name in 300 s"
  t2=$(ms)
  virsh -q -c qemu:///system destroy "$name" >/dev/null
  echo "domain $name: create $((t1 - t0)) ms, READY after $((t2 - t0)) ms"
}

case "${1:-}" in
daemon) daemon ;;
images) images ;;
boot) boot ;;
*) die "usage: libvirt.sh daemon|images|boot" ;;
esac
