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
