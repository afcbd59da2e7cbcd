package libvirt

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmscope/vmscope/vmi/qemu"
)

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		in       string
		dom, uri string
	}{
		{"libvirt:web1", "web1", DefaultURI},
		{"libvirt:web 1.example", "web 1.example", DefaultURI},
		{"libvirt:a,b?uri=qemu:///system", "a,b", DefaultURI},
		{"libvirt:web1?uri=qemu+unix:///system?socket=/run/x/libvirt-sock", "web1", "qemu+unix:///system?socket=/run/x/libvirt-sock"},
	} {
		s, err := ParseSpec(c.in)
		if err != nil || s.Domain != c.dom || s.URI != c.uri {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %q %q", c.in, s, err, c.dom, c.uri)
			continue
		}
		if again, err := ParseSpec(s.String()); err != nil || again != s {
			t.Errorf("%q: String %q parses to %+v, %v", c.in, s.String(), again, err)
		}
	}
	for _, bad := range []string{
		"", "web1", "libvirt:", "libvirt:?uri=qemu:///system", "libvirt:a/b", "libvirt:a\x00b", "libvirt:a\nb",
		"libvirt:web1?url=qemu:///system", "libvirt:web1?uri=", "libvirt:web1?uri=xen:///system",
		"libvirt:web1?uri=qemu+ssh://host/system", "libvirt:web1?uri=qemu://host/system",
		"libvirt:web1?uri=qemu:///session", "libvirt:web1?uri=qemu:///system?socket=/x",
		"libvirt:web1?uri=qemu+unix:///system?socket=rel", "libvirt:web1?uri=qemu+unix:///system?name=x",
		"libvirt:" + strings.Repeat("a", maxDomainName+1), "libvirt:\xff",
	} {
		if s, err := ParseSpec(bad); err == nil {
			t.Errorf("ParseSpec(%q) = %+v, want an error", bad, s)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"libvirt:web1", "libvirt:a,b?uri=qemu:///system", "libvirt:x?uri=qemu+unix:///system?socket=/s", "libvirt:?", "gdb://h:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpec(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "libvirt: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		if sp.Domain == "" || strings.ContainsAny(sp.Domain, "/?\x00") || !utf8.ValidString(sp.Domain) || sp.URI == "" {
			t.Fatalf("ParseSpec(%q) = %+v", s, sp)
		}
		if again, err := ParseSpec(sp.String()); err != nil || again != sp {
			t.Fatalf("ParseSpec(%q) = %+v; its String %q parses to %+v, %v", s, sp, sp.String(), again, err)
		}
	})
}

func TestParseReply(t *testing.T) {
	r, err := parseReply("query-status", []byte(`{"return":{"status":"running","singlestep":false,"running":true},"id":"libvirt-12"}`))
	if err != nil || string(r) != `{"status":"running","singlestep":false,"running":true}` {
		t.Errorf("return: %s %v", r, err)
	}
	_, err = parseReply("nope", []byte(`{"id":"libvirt-13","error":{"class":"CommandNotFound","desc":"The command nope has not been found"}}`))
	var qe *qemu.QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "nope" {
		t.Errorf("error reply: %v", err)
	}
	for _, bad := range []string{``, `{}`, `[`, `{"id":1}`, `"x"`, `{"return":` + strings.Repeat("[", 20000)} {
		if _, err := parseReply("x", []byte(bad)); !errors.Is(err, ErrReply) {
			t.Errorf("parseReply(%.40q): %v, want ErrReply", bad, err)
		}
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add([]byte(`{"return":{},"id":"libvirt-1"}`))
	f.Add([]byte(`{"error":{"class":"GenericError","desc":"x"}}`))
	f.Add([]byte(`{"return":"text\r\n"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReply("c", b)
		var qe *qemu.QMPError
		switch {
		case err == nil && len(r) == 0:
			t.Fatal("no error and no return")
		case err != nil && !errors.Is(err, ErrReply) && !errors.As(err, &qe):
			t.Fatalf("error %v is neither ErrReply nor a QMP error", err)
		}
	})
}

func TestGuestName(t *testing.T) {
	line := func(args ...string) []byte { return []byte(strings.Join(args, "\x00") + "\x00") }
	for _, c := range []struct {
		cmd  []byte
		want string
		ok   bool
	}{
		{line("/usr/bin/qemu-system-x86_64", "-name", "guest=web1,debug-threads=on", "-S"), "web1", true},
		{line("qemu", "-name", "guest=a,,b,debug-threads=on"), "a,b", true},
		{line("qemu", "-name", "debug-threads=on,guest=x"), "x", true},
		{line("qemu", "-name", "web1"), "", false},
		{line("qemu", "-name"), "", false},
		{line("sleep", "100"), "", false},
		{nil, "", false},
	} {
		if g, ok := guestName(c.cmd); g != c.want || ok != c.ok {
			t.Errorf("guestName(%q) = %q %v, want %q %v", c.cmd, g, ok, c.want, c.ok)
		}
	}
}

func FuzzGuestName(f *testing.F) {
	f.Add([]byte("qemu\x00-name\x00guest=a,,b,debug-threads=on\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		g, ok := guestName(b)
		if !ok && g != "" {
			t.Fatalf("guestName(%q) = %q without ok", b, g)
		}
		if ok && len(g) > len(b) {
			t.Fatalf("guestName(%q) = %q, longer than its input", b, g)
		}
	})
}

// The backup job description libvirt 9.0 gave TestPullBackup (an
// incremental pull backup of vda), with a disk vdb not backed up added.
const backupJobXML = `<domainbackup mode='pull'>
  <incremental>vmscope-c1</incremental>
  <server transport='unix' socket='/var/lib/libvirt/qemu/vmscope-backup-1/nbd.sock'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='vmscope-c1' exportname='vda' exportbitmap='backup-vda' index='2'>
      <driver type='qcow2'/>
      <scratch file='/var/lib/libvirt/qemu/vmscope-backup-1/scratch-vda.qcow2'/>
    </disk>
    <disk name='vdb' backup='no'/>
  </disks>
</domainbackup>`

func TestParseBackupJob(t *testing.T) {
	j, err := parseBackupJob([]byte(backupJobXML))
	if err != nil || j.Socket != "/var/lib/libvirt/qemu/vmscope-backup-1/nbd.sock" || j.Incremental != "vmscope-c1" ||
		len(j.Exports) != 1 || j.Exports[0] != (BackupExport{Target: "vda", Name: "vda", Bitmap: "backup-vda"}) ||
		j.Exports[0].Context() != "qemu:dirty-bitmap:backup-vda" {
		t.Fatalf("%+v %v", j, err)
	}
	for _, bad := range []string{``, `<domainbackup mode='push'/>`, strings.Replace(backupJobXML, "transport='unix'", "transport='tcp'", 1),
		strings.Replace(backupJobXML, " exportname='vda'", "", 1), strings.Replace(backupJobXML, "backup='yes'", "backup='no'", 1),
		"<domainbackup mode='pull'>" + strings.Repeat("<x>", maxXML/3)} {
		if _, err := parseBackupJob([]byte(bad)); !errors.Is(err, ErrBackupXML) {
			t.Errorf("parseBackupJob(%.60q): %v, want ErrBackupXML", bad, err)
		}
	}
}

func FuzzParseBackupJob(f *testing.F) {
	f.Add([]byte(backupJobXML))
	f.Add([]byte(`<domainbackup mode='pull'><server transport='unix' socket='/s'/><disks><disk name='a' exportname='a'/></disks></domainbackup>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := parseBackupJob(b)
		if err != nil {
			if !errors.Is(err, ErrBackupXML) {
				t.Fatalf("error %v is not ErrBackupXML", err)
			}
			return
		}
		if !strings.HasPrefix(j.Socket, "/") || len(j.Exports) == 0 {
			t.Fatalf("%+v", j)
		}
		for _, e := range j.Exports {
			if e.Target == "" || e.Name == "" {
				t.Fatalf("export %+v", e)
			}
		}
	})
}

func TestBackupXML(t *testing.T) {
	bx, cx, err := backupXML(PullBackup{Socket: "/d/nbd.sock", Incremental: "c1", Checkpoint: "c2",
		Disks: []BackupDisk{{Target: "vda", Scratch: "/d/s'<.qcow2"}}})
	want := `<domainbackup mode="pull"><incremental>c1</incremental><server transport="unix" socket="/d/nbd.sock"></server><disks><disk name="vda" backup="yes" type="file"><scratch file="/d/s&#39;&lt;.qcow2"></scratch></disk></disks></domainbackup>`
	if err != nil || bx != want {
		t.Errorf("backup xml %s %v\nwant %s", bx, err, want)
	}
	if cx != `<domaincheckpoint><name>c2</name><disks><disk name="vda" checkpoint="bitmap"></disk></disks></domaincheckpoint>` {
		t.Errorf("checkpoint xml %s", cx)
	}
	bx, cx, err = backupXML(PullBackup{Socket: "/d/nbd.sock", Disks: []BackupDisk{{Target: "vda", Scratch: "/d/s.qcow2"}}})
	if err != nil || strings.Contains(bx, "incremental") || cx != "" {
		t.Errorf("full backup: %s %q %v", bx, cx, err)
	}
	for _, bad := range []PullBackup{{}, {Socket: "rel", Disks: []BackupDisk{{"vda", "/s"}}}, {Socket: "/s"}, {Socket: "/s", Disks: []BackupDisk{{"vda", "rel"}}}, {Socket: "/s", Disks: []BackupDisk{{"", "/x"}}}} {
		if _, _, err := backupXML(bad); err == nil {
			t.Errorf("backupXML(%+v) accepted", bad)
		}
	}
}
