package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestPacketRoundTrip(t *testing.T) {
	for _, p := range []string{"", "OK", "m1000,10", "a$b#c}d*e", strings.Repeat("}", 100)} {
		raw := appendPacket(nil, []byte(p))
		got, err := readPacket(bufio.NewReader(bytes.NewReader(append([]byte("+-junk"), raw...))))
		if err != nil || string(got) != p {
			t.Errorf("%q: framed %q, read back %q, %v", p, raw, got, err)
		}
	}
}

func TestPacketDecode(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"$OK#9a", "OK"},
		{"$0* #7a", "0000"}, // ' ' is 32: three more
		{"$}]#da", "}"},     // '}' ']'=0x5d: 0x5d^0x20 = '}'
		{"$T05thread:01;#07", "T05thread:01;"},
	} {
		got, err := readPacket(bufio.NewReader(strings.NewReader(c.in)))
		if err != nil || string(got) != c.want {
			t.Errorf("%q: %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"$OK#00", "$OK#zz", "$*#2a", "$a}#de", "$a*\x1e#a9", "$OK"} {
		_, err := readPacket(bufio.NewReader(strings.NewReader(bad)))
		if err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := readPacket(bufio.NewReader(strings.NewReader("$OK#00"))); !errors.Is(err, ErrProtocol) {
		t.Errorf("bad checksum: %v, want ErrProtocol", err)
	}
}

func TestParseStop(t *testing.T) {
	s := parseStop([]byte("T05thread:p01.02;watch:ffffffff81000000;"))
	if s.Signal != 5 || s.Thread != 2 || s.Watch != "watch" || s.Addr != 0xffffffff81000000 {
		t.Errorf("%+v", s)
	}
	if s := parseStop([]byte("W00")); !s.Exited {
		t.Errorf("%+v", s)
	}
	for _, p := range []string{"OK", "E22", "l<xml/>", "QC1", "ffee", "T5"} {
		if isStopReply([]byte(p)) {
			t.Errorf("%q taken for a stop reply", p)
		}
	}
}

// FuzzPacket decodes random bytes: no panic, the decoded size is bounded,
// and whatever decodes re-encodes to a packet that decodes to the same.
func FuzzPacket(f *testing.F) {
	for _, s := range []string{"$OK#9a", "$0* #7a", "$}]#da", "+$T05thread:01;#07", "$a*\x1e#a9", "$#00", "$" + strings.Repeat("0*~", 500) + "#00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for i := 0; i < 4; i++ {
			p, err := readPacket(r)
			if err != nil {
				return
			}
			if len(p) > maxPacket {
				t.Fatalf("decoded %d bytes > %d", len(p), maxPacket)
			}
			q, err := readPacket(bufio.NewReader(bytes.NewReader(appendPacket(nil, p))))
			if err != nil || !bytes.Equal(p, q) {
				t.Fatalf("re-encoding %q: %q, %v", p, q, err)
			}
			if isStopReply(p) {
				parseStop(p)
			}
		}
	})
}

func BenchmarkReadPacket(b *testing.B) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 256)
	raw := appendPacket(nil, payload)
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		if _, err := readPacket(bufio.NewReader(bytes.NewReader(raw))); err != nil {
			b.Fatal(err)
		}
	}
}
