#!/bin/sh
# /init of the rootkit fixture guests (testdata/rootkit/build.sh): loads
# vmscope_rootkit.ko with the scenario named on the kernel command line
# (vmscope.rootkit=sct|ftrace|hide|code; clean or none loads nothing),
# prints what the module did between "=== BEGIN rootkit ===" and
# "=== END rootkit ===", then runs the guest fixture's own /init
# (testdata/guest/init.sh, here /init.guest) unchanged.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo 1 > /proc/sys/kernel/printk
mode=$(sed -n 's/.*vmscope\.rootkit=\([a-z]*\).*/\1/p' /proc/cmdline)
: > /vmscope_hidden_file
if [ -n "$mode" ] && [ "$mode" != clean ]; then
  insmod /lib/modules/vmscope_rootkit.ko mode="$mode" || echo "=== FAIL insmod rootkit ==="
fi
echo "=== BEGIN rootkit ==="
echo "scenario=${mode:-none}"
dmesg | sed -n 's/.*vmscope-rootkit: //p'
if ls / | grep -q '^vmscope_hidden_file$'; then echo "hidden_file=visible"; else echo "hidden_file=hidden"; fi
if grep -q '^vmscope_rootkit ' /proc/modules; then echo "proc_modules=listed"; else echo "proc_modules=absent"; fi
if [ -d /sys/module/vmscope_rootkit ]; then echo "sysfs=listed"; else echo "sysfs=absent"; fi
echo "=== END rootkit ==="
umount /sys
umount /proc
exec /init.guest
