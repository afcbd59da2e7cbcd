#!/bin/sh
# /init of the cfi workload guest (testdata/cfi-plugin/build.sh puts it in a
# copy of the guest fixture's initramfs). It prints the banner and the
# kernel's symbols as ground truth, starts a busybox httpd on loopback,
# prints "=== READY ===", then runs the benign workload of the cfi tests and
# bench/cfi.sh for ever: one iteration is ls, cat, a fork/exec and a local
# HTTP fetch. Every 2 s of guest uptime it prints
#   === WORK iterations=N uptime=SECONDS ===
# so that the host measures iterations per second from the console.
# With cfi.idle on the kernel command line it stays idle after READY.
# With cfi.rootkit=MODE (sct, ftrace, hide, code) it loads the rootkit
# fixture's module (testdata/rootkit) with that mode cfi.rootkit_after=S
# seconds after READY (default 5), printing "=== INSMOD <uptime> ===" 1 s
# before and the module's own report (its addresses) as
# "=== ROOTKIT <line> ===" lines after.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=16m tmpfs /tmp
echo 1 > /proc/sys/kernel/printk
echo 0 > /proc/sys/kernel/kptr_restrict
ifconfig lo 127.0.0.1 up
mkdir -p /tmp/www
echo "vmscope cfi workload" > /tmp/www/index.html
httpd -p 127.0.0.1:8080 -h /tmp/www
echo "=== BEGIN version ==="; cat /proc/version; echo "=== END version ==="
echo "=== READY ==="
rk=$(sed -n 's/.*cfi\.rootkit=\([a-z]*\).*/\1/p' /proc/cmdline)
after=$(sed -n 's/.*cfi\.rootkit_after=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$rk" ]; then
  (
    sleep "${after:-5}"
    read up _ < /proc/uptime
    echo "=== INSMOD $up ==="
    sleep 1 # the line reaches the console before the load starts
    insmod /lib/modules/vmscope_rootkit.ko mode="$rk" || echo "=== FAIL insmod ==="
    dmesg | sed -n 's/.*vmscope-rootkit: \(.*\)/=== ROOTKIT \1 ===/p'
  ) &
fi
if grep -q 'cfi\.idle' /proc/cmdline; then
  while :; do sleep 3600; done
fi
i=0
next=0
while :; do
  ls / /proc/self > /dev/null
  cat /proc/version /tmp/www/index.html > /dev/null
  /bin/true
  wget -q -O /dev/null http://127.0.0.1:8080/index.html
  i=$((i + 1))
  read up _ < /proc/uptime
  s=${up%.*}
  if [ "$s" -ge "$next" ]; then
    echo "=== WORK iterations=$i uptime=$up ==="
    next=$((s + 1))
  fi
done
