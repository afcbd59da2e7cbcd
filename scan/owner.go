package scan

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MaxPasswdSize bounds the guest /etc/passwd that ReadOwners reads
// (a guest file is hostile; real ones are a few KiB).
const MaxPasswdSize = 16 << 20

// ErrPasswd is the category of an /etc/passwd that cannot be used.
var ErrPasswd = errors.New("scan: guest passwd")

// Owners maps uids to user names, as a guest's own /etc/passwd says; the
// caller sets File.Owner from it (Owners.Owner), the owner external.
type Owners map[uint32]string

// ReadOwners parses a passwd(5) file of size bytes: name:password:uid:...
// lines. The first line for a uid names it (getpwuid's answer); lines that
// are comments, empty, or whose uid is not a number are skipped, as libc
// skips them; a name with bytes that cannot be in a user name (control
// characters) is skipped too. A file larger than MaxPasswdSize is refused.
func ReadOwners(r io.ReaderAt, size int64) (Owners, error) {
	if size < 0 || size > MaxPasswdSize {
		return nil, fmt.Errorf("%w: size %d not in [0, %d]", ErrPasswd, size, MaxPasswdSize)
	}
	sc := bufio.NewScanner(io.NewSectionReader(r, 0, size))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	o := Owners{}
	line := 0
	for sc.Scan() {
		line++
		l := sc.Bytes()
		if len(l) == 0 || l[0] == '#' || l[0] == '+' || l[0] == '-' {
			continue
		}
		f := bytes.SplitN(l, []byte(":"), 4)
		if len(f) < 4 || len(f[0]) == 0 || bytes.ContainsFunc(f[0], func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			continue
		}
		uid, err := strconv.ParseUint(string(f[2]), 10, 32)
		if err != nil {
			continue
		}
		if _, dup := o[uint32(uid)]; !dup {
			o[uint32(uid)] = string(f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: line %d: %w", ErrPasswd, line+1, err)
	}
	return o, nil
}

// Owner is the owner external for uid: its name, else the decimal uid.
func (o Owners) Owner(uid uint32) string {
	if n, ok := o[uid]; ok {
		return n
	}
	return strconv.FormatUint(uint64(uid), 10)
}
