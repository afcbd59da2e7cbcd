package scan

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestReadOwners(t *testing.T) {
	src := "root:x:0:0:root:/root:/bin/bash\r\n" +
		"# comment:x:5:5::/:/bin/sh\n" +
		"+nis:x:6:6::/:/bin/sh\n" +
		"confluence:x:1001:1001::/opt/confluence:/bin/sh\n" +
		"alias:x:1001:1001::/:/bin/sh\n" +
		"bad:x:notanumber:1::/:/bin/sh\n" +
		"big:x:4294967296:1::/:/bin/sh\n" +
		"ctl\x01:x:7:7::/:/bin/sh\n" +
		"short:x:8\n" +
		strings.Repeat("L", 100<<10) + ":x:9:9::/:/bin/sh\n" +
		"after:x:10:10::/:/bin/sh" // no final newline
	o, err := ReadOwners(strings.NewReader(src), int64(len(src)))
	if err != nil {
		t.Fatal(err)
	}
	want := Owners{0: "root", 1001: "confluence", 10: "after"}
	if len(o) != len(want) {
		t.Errorf("owners %v, want %v", o, want)
	}
	for uid, name := range want {
		if o[uid] != name {
			t.Errorf("uid %d: %q, want %q", uid, o[uid], name)
		}
	}
	if o.Owner(1001) != "confluence" || o.Owner(4242) != "4242" || Owners(nil).Owner(0) != "0" {
		t.Errorf("Owner: %q %q", o.Owner(1001), o.Owner(4242))
	}
	if _, err := ReadOwners(strings.NewReader(""), MaxPasswdSize+1); !errors.Is(err, ErrPasswd) {
		t.Errorf("oversized: %v", err)
	}
}

func FuzzReadOwners(f *testing.F) {
	f.Add([]byte("root:x:0:0:root:/root:/bin/bash\nconfluence:x:1001:1001::/:/bin/sh\n"))
	f.Add([]byte("a:b:1:\n\n#x\nb:c:1:\n"))
	f.Add(bytes.Repeat([]byte("x"), 70<<10))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ReadOwners(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err) // only a read error or an oversized file fails
		}
		for uid, name := range o {
			if name == "" || strings.ContainsAny(name, ":\n") || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("uid %d: bad name %q", uid, name)
			}
			if !bytes.Contains(b, []byte(name+":")) {
				t.Fatalf("name %q not in the input", name)
			}
		}
	})
}

func TestIncludeNames(t *testing.T) {
	src := "include \"a.yar\"\n  include \"sub/b.yar\"\r\n// include \"c.yar\"\nx include \"d.yar\"\ninclude\t\"q\\\"uote.yar\"\ninclude \"unterminated\nrule r { strings: $s = \"include \\\"x\\\"\" condition: $s }\n"
	got := strings.Join(includeNames([]byte(src)), "|")
	if want := `a.yar|sub/b.yar|q"uote.yar`; got != want {
		t.Errorf("includeNames = %q, want %q", got, want)
	}
}

func FuzzIncludeNames(f *testing.F) {
	f.Add([]byte("include \"a.yar\"\n  include \"sub/b.yar\"\nrule x { condition: true }\n"))
	f.Add([]byte("// include \"c.yar\"\ninclude\t\"q\\\"uote.yar\"\ninclude \"unterminated\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		for _, n := range includeNames(src) {
			if strings.ContainsAny(n, "\n") {
				t.Fatalf("name %q spans lines", n)
			}
			if len(n) > len(src) {
				t.Fatalf("name %q longer than the source", n)
			}
		}
	})
}
