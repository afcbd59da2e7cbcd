#!/bin/sh
# /init of the vmscope guest fixture (busybox-static initramfs built by
# testdata/guest/build.sh). It sets up a known scenario, prints the guest's
# own view of it to the serial console as ground truth between
# "=== BEGIN name ===" / "=== END name ===" markers, prints "=== READY ===",
# and then blocks in `wait` so that no process starts or ends afterwards:
# the processes alive at dump time are exactly those of the ps section, less
# the ps process itself.
#
# Scenario:
#   modules   dummy.ko and crc32_generic.ko insmod'ed from the Debian package
#   sleep     `sleep 31337`                              (child of init)
#   worker    `/bin/sh /tmp/worker.sh alpha beta`, fd 3 reading /tmp/held.txt,
#             fd 4 writing /tmp/worker.log, with a `sleep 3600` child
#   pipe      `sleep 100001 | cat`                       (a pipe between two processes)
#   nc        `nc -l -p 4444`                            (a listening TCP socket)
#   syslogd   `syslogd -n -O /tmp/messages`              (a unix datagram socket /dev/log)
#   tree      `/bin/sh /tmp/tree.sh 3` -> `... tree.sh 2` -> `sleep 42424`
#   threader  `/bin/threader 4`: a static Go program with threads named worker-0..3
#
# With vmscope.writers on the kernel command line (testdata/guest/build.sh's
# writers boot), the virtio-blk and qemu_fw_cfg modules are loaded first
# (fw_cfg hands QEMU's vmcoreinfo device the kernel's VMCOREINFO, which
# makedumpfile needs), the ext4 disk /dev/vda is mounted on /mnt, and once
# the scenario is steady the LiME module dumps memory to /mnt/guest.lime
# (`insmod lime.ko path=... format=lime timeout=0`, the insmod process's pid
# printed as "lime" in the scenario section) before the ground truth is
# printed: the truth and QEMU's dumps after READY are of the moment right
# after LiME's.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=16m tmpfs /tmp
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
echo 1 > /proc/sys/kernel/printk          # no kernel message inside a section
echo 0 > /proc/sys/kernel/kptr_restrict   # real addresses in /proc/kallsyms and /proc/modules
ifconfig lo 127.0.0.1 up

insmod /lib/modules/dummy.ko
insmod /lib/modules/crc32_generic.ko

writers=
if grep -q 'vmscope\.writers' /proc/cmdline; then
  writers=1
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk qemu_fw_cfg; do
    insmod /lib/modules/$m.ko || echo "=== FAIL insmod $m ==="
  done
  mkdir -p /mnt
  for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
  # no_prefetch_block_bitmaps: no ext4lazyinit thread, which would end
  # between LiME's moment and QEMU's (build.sh initialises the inode tables)
  mount -t ext4 -o no_prefetch_block_bitmaps /dev/vda /mnt || echo "=== FAIL mount ==="
  for i in $(seq 100); do pidof ext4lazyinit >/dev/null || break; sleep 0.1; done
  if pidof ext4lazyinit >/dev/null; then echo "=== FAIL ext4lazyinit ==="; fi
fi

echo "vmscope held file" > /tmp/held.txt
cat > /tmp/worker.sh <<'WORKER'
exec 3</tmp/held.txt
exec 4>/tmp/worker.log
echo "worker $*" >&4
while :; do sleep 3600; done
WORKER
cat > /tmp/tree.sh <<'TREE'
if [ "$1" -gt 1 ]; then
  /bin/sh /tmp/tree.sh $(($1 - 1)) &
  wait
else
  exec sleep 42424
fi
TREE

sleep 31337 &
p_sleep=$!
/bin/sh /tmp/worker.sh alpha beta &
p_worker=$!
sleep 100001 | cat &
p_pipecat=$!
nc -l -p 4444 &
p_nc=$!
syslogd -n -O /tmp/messages &
p_syslogd=$!
/bin/sh /tmp/tree.sh 3 &
p_tree=$!
/bin/threader 4 &
p_threader=$!
sleep 1   # let them reach their steady state (files open, socket bound)

p_lime=
if [ -n "$writers" ]; then
  insmod /lib/modules/lime.ko path=/mnt/guest.lime format=lime timeout=0 &
  p_lime=$!
  wait $p_lime || echo "=== FAIL lime ==="
  sync
fi

begin() { echo "=== BEGIN $* ==="; }
end() { echo "=== END $* ==="; }

begin scenario
echo "init 1"
echo "sleep $p_sleep"
echo "worker $p_worker"
echo "pipecat $p_pipecat"
echo "nc $p_nc"
echo "syslogd $p_syslogd"
echo "tree $p_tree"
echo "threader $p_threader"
[ -z "$p_lime" ] || echo "lime $p_lime"
end scenario
begin version; cat /proc/version; end version
begin cmdline; cat /proc/cmdline; end cmdline
begin ps; ps -o pid,ppid,comm,args; end ps
begin ps-threads; ps -T -o pid,ppid,comm,args; end ps-threads
for p in 1 $(ps -o pid | sed 1d); do
  [ -d /proc/$p ] || continue
  [ -e /proc/$p/exe ] || continue   # kernel threads have no files
  begin status $p; cat /proc/$p/status; end status $p
  begin fd $p; ls -l /proc/$p/fd; end fd $p
  begin tasks $p
  for t in /proc/$p/task/*; do echo "${t##*/} $(cat $t/comm)"; done
  end tasks $p
done
begin modules; cat /proc/modules; end modules
begin mounts; cat /proc/mounts; end mounts
begin iomem; cat /proc/iomem; end iomem
begin net-tcp; cat /proc/net/tcp; end net-tcp
begin net-unix; cat /proc/net/unix; end net-unix
begin kallsyms; cat /proc/kallsyms; end kallsyms
echo "=== READY ==="
while :; do wait; done
