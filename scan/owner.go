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
// characters) is skipped too, and so is a line longer than 64 KiB. A file
// larger than MaxPasswdSize is refused.
func ReadOwners(r io.ReaderAt, size int64) (Owners, error) {
	if size < 0 || size > MaxPasswdSize {
		return nil, fmt.Errorf("%w: size %d not in [0, %d]", ErrPasswd, size, MaxPasswdSize)
	}
	br := bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 64<<10)
	o := Owners{}
	var off int64
	for {
		l, err := br.ReadSlice('\n')
		long := err == bufio.ErrBufferFull
		for err == bufio.ErrBufferFull { // a line longer than any real entry: skipped
			var more []byte
			more, err = br.ReadSlice('\n')
			off += int64(len(more))
		}
		off += int64(len(l))
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("%w: read at offset %d: %w", ErrPasswd, off, err)
		}
		if !long {
			addOwner(o, bytes.TrimRight(l, "\r\n"))
		}
		if err == io.EOF {
			return o, nil
		}
	}
}

// addOwner adds the passwd line l to o (see ReadOwners for what counts).
func addOwner(o Owners, l []byte) {
	if len(l) == 0 || l[0] == '#' || l[0] == '+' || l[0] == '-' {
		return
	}
	f := bytes.SplitN(l, []byte(":"), 4)
	if len(f) < 4 || len(f[0]) == 0 || bytes.ContainsFunc(f[0], func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return
	}
	uid, err := strconv.ParseUint(string(f[2]), 10, 32)
	if err != nil {
		return
	}
	if _, dup := o[uint32(uid)]; !dup {
		o[uint32(uid)] = string(f[0])
	}
}

// Owner is the owner external for uid: its name, else the decimal uid.
func (o Owners) Owner(uid uint32) string {
	if n, ok := o[uid]; ok {
		return n
	}
	return strconv.FormatUint(uint64(uid), 10)
}
