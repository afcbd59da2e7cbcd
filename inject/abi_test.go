package inject

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"slices"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmerr"
)

// dirent builds one linux_dirent64 record as the kernel writes it
// (fs/readdir.c filldir64: reclen = ALIGN(19 + len(name) + 1, 8)).
func dirent(ino uint64, typ byte, name string) []byte {
	n := (direntHeader + len(name) + 1 + 7) &^ 7
	b := make([]byte, n)
	binary.LittleEndian.PutUint64(b, ino)
	binary.LittleEndian.PutUint64(b[8:], 99)
	binary.LittleEndian.PutUint16(b[16:], uint16(n))
	b[18] = typ
	copy(b[direntHeader:], name)
	return b
}

func TestParseDirents(t *testing.T) {
	var b []byte
	b = append(b, dirent(2, 4, ".")...)
	b = append(b, dirent(12, 8, "hello.txt")...)
	b = append(b, dirent(13, 10, "link")...)
	got, err := parseDirents(b)
	want := []Dirent{{2, "dir", "."}, {12, "file", "hello.txt"}, {13, "symlink", "link"}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("%+v %v", got, err)
	}
	// hostile: reclen past the end, reclen too small, no NUL, empty name
	bad := map[string][]byte{}
	x := dirent(1, 8, "abc")
	binary.LittleEndian.PutUint16(x[16:], 200)
	bad["long reclen"] = x
	x = dirent(1, 8, "abc")
	binary.LittleEndian.PutUint16(x[16:], 8)
	bad["short reclen"] = x
	x = dirent(1, 8, "abcd")
	for i := direntHeader; i < len(x); i++ {
		x[i] = 'a'
	}
	bad["no NUL"] = x
	bad["empty name"] = dirent(1, 8, "")
	bad["truncated"] = dirent(1, 8, "abc")[:10]
	for name, b := range bad {
		_, err := parseDirents(b)
		var fe *vmerr.FormatError
		if !errors.Is(err, ErrResult) || !errors.As(err, &fe) || fe.Struct != "linux_dirent64" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseStat(t *testing.T) {
	b := make([]byte, statSize)
	put := func(o int, v uint64) { binary.LittleEndian.PutUint64(b[o:], v) }
	put(0, 0xfe00)
	put(8, 15)
	put(16, 1)
	binary.LittleEndian.PutUint32(b[24:], 0o100640)
	binary.LittleEndian.PutUint32(b[28:], 1000)
	binary.LittleEndian.PutUint32(b[32:], 1001)
	put(48, 30)
	put(88, 1704164645)
	put(96, 5)
	st, err := parseStat(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ino != 15 || st.UID != 1000 || st.GID != 1001 || st.Size != 30 || st.Mtime != time.Unix(1704164645, 5).UTC() ||
		st.FileMode() != 0o640 || st.ModeString() != "-rw-r-----" {
		t.Errorf("%+v %v %s", st, st.FileMode(), st.ModeString())
	}
	st.Mode = 0o41777
	if st.ModeString() != "drwxrwxrwt" || st.FileMode() != fs.ModeDir|fs.ModeSticky|0o777 {
		t.Errorf("%s %v", st.ModeString(), st.FileMode())
	}
	if _, err := parseStat(b[:100]); !errors.Is(err, ErrResult) {
		t.Errorf("short stat: %v", err)
	}
}

func TestErrno(t *testing.T) {
	if err := errnoOf(^uint64(1)); !errors.Is(err, Errno(2)) || err.Error() != "ENOENT" {
		t.Errorf("-2: %v", err)
	}
	if errnoOf(0) != nil || errnoOf(1<<47) != nil || errnoOf(uint64(1<<64-4096)) != nil {
		t.Error("a result taken for an errno")
	}
}

func TestParseProcStat(t *testing.T) {
	p, err := parseProcStat([]byte("95 (du) m)y) S 1 95 1 0 -1 4194560 94 0 0 0"))
	if err != nil || p.PID != 95 || p.Comm != "du) m)y" || p.State != "S" || p.PPID != 1 {
		t.Errorf("%+v %v", p, err)
	}
	for _, s := range []string{"", "95 du S 1", "x (a) S 1", "95 (a)", "95 (a) S x"} {
		if _, err := parseProcStat([]byte(s)); !errors.Is(err, ErrResult) {
			t.Errorf("%q: %v", s, err)
		}
	}
}

// The fixture guest's /proc/net/tcp6 with nc -l -p 4444, and netstat -an
// of busybox for it.
func TestParseNet(t *testing.T) {
	tcp6 := "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 00000000000000000000000000000000:115C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1540 1 0000000000000000 100 0 0 10 0\n" +
		"   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1541 1 0000000000000000 100 0 0 10 0\n"
	s, err := parseNet("tcp6", []byte(tcp6))
	if err != nil || len(s) != 2 {
		t.Fatalf("%+v %v", s, err)
	}
	if l := NetstatLine(s[0]); l != "tcp :::4444 :::* LISTEN" {
		t.Errorf("%q", l)
	}
	if s[1].Local != "::ffff:7f00:1:8080" || s[1].State != "ESTABLISHED" || s[1].Inode != 1541 {
		t.Errorf("%+v", s[1])
	}
	tcp := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
		"   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0 100 0 0 10 0\n"
	s, err = parseNet("tcp", []byte(tcp))
	if err != nil || len(s) != 1 || NetstatLine(s[0]) != "tcp 127.0.0.1:22 0.0.0.0:* LISTEN" {
		t.Errorf("%+v %v", s, err)
	}
	unix := "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 1234 /dev/log\n"
	s, err = parseNet("unix", []byte(unix))
	if err != nil || len(s) != 1 || s[0].UnixPth != "/dev/log" || s[0].State != "STREAM LISTENING" {
		t.Errorf("%+v %v", s, err)
	}
	for _, bad := range []string{"h\n 0: 0100007F 00000000:0000 0A a b c d e 1\n", "h\n 0: 0100007G:0016 00000000:0000 0A a b c d e 1\n", "h\n 0: 1\n"} {
		if _, err := parseNet("tcp", []byte(bad)); !errors.Is(err, ErrResult) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestRank(t *testing.T) {
	c := []*Candidate{{PID: 5, Threads: 4, Switches: 100}, {PID: 9, Threads: 1, Switches: 1}, {PID: 7, Threads: 1, Switches: 3}, {PID: 3, Threads: 1, Switches: 3}}
	rank(c)
	var got []int
	for _, x := range c {
		got = append(got, x.PID)
	}
	if !slices.Equal(got, []int{3, 7, 9, 5}) {
		t.Errorf("rank: %v", got)
	}
}

func TestVetRules(t *testing.T) {
	ok := taskState{PID: 50, MM: 1, PGD: 0x1000, Regs: ptRegs{CS: userCS, SS: 0x2b}, CapEff: ^uint64(0)}
	if r := (&kernel{}).vet(ok, 1<<capKill); r != "" {
		t.Fatalf("a fit task rejected: %s", r)
	}
	for want, f := range map[string]func(*taskState){
		"kernel thread":   func(t *taskState) { t.Flags |= pfKthread },
		"pid 1":           func(t *taskState) { t.PID = 1 },
		"exiting":         func(t *taskState) { t.ExitState = 16 },
		"traced":          func(t *taskState) { t.Ptrace = 1 },
		"stopped":         func(t *taskState) { t.State = taskStopped },
		"frozen":          func(t *taskState) { t.State = taskFrozen },
		"seccomp mode 2":  func(t *taskState) { t.Seccomp = 2 },
		"pending signals": func(t *taskState) { t.Shared = 1 << 14 },
		"not a 64-bit":    func(t *taskState) { t.Regs.CS = userCS32 },
		"lacks capabilit": func(t *taskState) { t.CapEff = 0 },
		"no user frame":   func(t *taskState) { t.RegsErr = ErrCorrupt },
	} {
		ts := ok
		f(&ts)
		if r := (&kernel{}).vet(ts, 1<<capKill); len(r) < len(want) || r[:len(want)] != want {
			t.Errorf("%s: rejected %q", want, r)
		}
	}
}
