package inject

import (
	"errors"
	"testing"
)

// FuzzParseDirents: any bytes give records that tile the input exactly,
// each with a 1..255-byte name without NUL, or ErrResult.
func FuzzParseDirents(f *testing.F) {
	f.Add(append(dirent(2, 4, "."), dirent(12, 8, "hello.txt")...))
	f.Add(dirent(1, 8, "x")[:20])
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := parseDirents(b)
		if err != nil {
			if !errors.Is(err, ErrResult) {
				t.Fatalf("error %v is not ErrResult", err)
			}
			return
		}
		if len(ds) > len(b)/(direntHeader+1) {
			t.Fatalf("%d records from %d bytes", len(ds), len(b))
		}
		for _, d := range ds {
			if len(d.Name) == 0 || len(d.Name) > 255 {
				t.Fatalf("name of %d bytes", len(d.Name))
			}
			for i := 0; i < len(d.Name); i++ {
				if d.Name[i] == 0 {
					t.Fatal("NUL in a name")
				}
			}
		}
	})
}

// FuzzParseNet: a /proc/net table parses into at most one socket a line
// or fails with ErrResult.
func FuzzParseNet(f *testing.F) {
	f.Add("tcp", "h\n   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1\n")
	f.Add("tcp6", "h\n   0: 00000000000000000000000000000000:115C 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1540\n")
	f.Add("unix", "h\n0: 00000002 00000000 00010000 0001 01 1234 /dev/log\n")
	f.Fuzz(func(t *testing.T, proto, text string) {
		if proto != "tcp" && proto != "tcp6" && proto != "udp" && proto != "udp6" && proto != "unix" {
			return
		}
		s, err := parseNet(proto, []byte(text))
		if err != nil {
			if !errors.Is(err, ErrResult) {
				t.Fatalf("error %v is not ErrResult", err)
			}
			return
		}
		lines := 0
		for _, c := range text {
			if c == '\n' {
				lines++
			}
		}
		if len(s) > lines+1 {
			t.Fatalf("%d sockets from %d lines", len(s), lines)
		}
	})
}

// FuzzParseProcStat: a parsed /proc/PID/stat has a positive-length
// comm of at most 64 bytes, or fails with ErrResult.
func FuzzParseProcStat(f *testing.F) {
	f.Add("95 (dummy) S 1 95 1 0")
	f.Add("1 ((sd-pam)) S 0")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseProcStat([]byte(s))
		if err != nil {
			if !errors.Is(err, ErrResult) {
				t.Fatalf("error %v is not ErrResult", err)
			}
			return
		}
		if len(p.Comm) > 64 || p.State == "" {
			t.Fatalf("%+v", p)
		}
	})
}
