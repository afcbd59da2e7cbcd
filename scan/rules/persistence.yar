// Persistence through the dynamic loader and through SSH keys.

rule LdSoPreload_Library
{
    meta:
        description = "/etc/ld.so.preload names a shared object: every dynamically linked program loads it (userland rootkits use this; Debian ships no such file)"
        author = "vmscope"
        severity = "high"
        reference = "https://man7.org/linux/man-pages/man8/ld.so.8.html"
        date = "2025-01-01"
    strings:
        // One match per line that names a shared object (anchored at the
        // start of a line, so a long path is not matched at every offset).
        $so = /(^|\n)[ \t]*[^\s#][^\s]{0,1023}\.so(\.[0-9]+)*(\s|$)/
    condition:
        filepath == "/etc/ld.so.preload" and $so
}

rule SSH_AuthorizedKeys_Root
{
    meta:
        description = "root's authorized_keys holds a usable key (direct root login by key; keys disabled by cloud-init's \"Please login as the user\" command do not count)"
        author = "vmscope"
        severity = "medium"
        date = "2025-01-01"
    strings:
        $key = /(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)\s+AAAA/
        $cloudinit = "command=\"echo 'Please login as the user"
    condition:
        (filepath == "/root/.ssh/authorized_keys" or filepath == "/root/.ssh/authorized_keys2") and
        #key > #cloudinit
}

rule SSH_AuthorizedKeys_Forced_Command
{
    meta:
        description = "authorized_keys entry with a forced command= (runs on every login with that key; backdoors use it to launch payloads). cloud-init's root-disable message, gitlab-shell and gitolite are not counted"
        author = "vmscope"
        severity = "medium"
        reference = "https://man.openbsd.org/sshd.8#AUTHORIZED_KEYS_FILE_FORMAT"
        date = "2025-01-01"
    strings:
        $cmd = "command=\""
        $ok_cloudinit = "command=\"echo 'Please login as the user"
        $ok_gitlab = /command="[^"\n]{0,256}gitlab-shell/
        $ok_gitolite = /command="[^"\n]{0,256}gitolite-shell/
    condition:
        (filename == "authorized_keys" or filename == "authorized_keys2") and
        #cmd > #ok_cloudinit + #ok_gitlab + #ok_gitolite
}
