package inject

import (
	"encoding/binary"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/vmscope/vmscope/vmerr"
)

// The x86-64 system-call numbers the operations use: the kernel's ABI
// (arch/x86/entry/syscalls/syscall_64.tbl), the same on every kernel
// build, so they are constants here rather than read from the guest.
const (
	sysRead          = 0
	sysClose         = 3
	sysMmap          = 9
	sysMunmap        = 11
	sysRtSigprocmask = 14
	sysGetpid        = 39
	sysKill          = 62
	sysGetdents64    = 217
	sysOpenat        = 257
	sysNewfstatat    = 262
)

// allowed is the fixed allow-list of calls inject makes, by number.
var allowed = map[uint64]string{
	sysRead: "read", sysClose: "close", sysMmap: "mmap", sysMunmap: "munmap",
	sysRtSigprocmask: "rt_sigprocmask", sysGetpid: "getpid", sysKill: "kill",
	sysGetdents64: "getdents64", sysOpenat: "openat", sysNewfstatat: "newfstatat",
}

// Flags of the ABI (include/uapi): open(2), mmap(2), fstatat(2),
// rt_sigprocmask(2).
const (
	atFDCWDArg        = 0xffffffffffffff9c // AT_FDCWD (-100) as the 64-bit register holds it
	oRdonly           = 0
	oDirectory        = 0o200000
	oNofollow         = 0o400000
	oCloexec          = 0o2000000
	atSymlinkNofollow = 0x100
	protRead          = 1
	protWrite         = 2
	mapPrivate        = 0x02
	mapAnonymous      = 0x20
	mapPopulate       = 0x8000
	sigSetmask        = 2
)

// Errno is a system call's error, -4095..-1 in RAX.
type Errno uint64

var errnoNames = map[Errno]string{
	1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 9: "EBADF", 12: "ENOMEM",
	13: "EACCES", 14: "EFAULT", 17: "EEXIST", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL",
	24: "EMFILE", 36: "ENAMETOOLONG", 40: "ELOOP",
}

func (e Errno) Error() string {
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return fmt.Sprintf("errno %d", uint64(e))
}

// errnoOf returns the error a system call's RAX holds (-4095..-1), nil
// for a result.
func errnoOf(rax uint64) error {
	if int64(rax) < 0 && int64(rax) >= -4095 {
		return Errno(-int64(rax))
	}
	return nil
}

// ErrResult is a result the guest returned that breaks the ABI or a cap
// (a record longer than the buffer, a file larger than asked for).
var ErrResult = vmerr.New("inject: bad result from the guest", vmerr.ErrCorrupt)

// Dirent is one linux_dirent64 record getdents64 returned.
type Dirent struct {
	Ino  uint64 `json:"inode"`
	Type string `json:"type"` // from d_type: file, dir, symlink, fifo, socket, char, block, unknown
	Name string `json:"name"`
}

// direntHeader is the fixed part of struct linux_dirent64
// (include/linux/dirent.h, ABI): u64 d_ino, s64 d_off, u16 d_reclen,
// u8 d_type, then d_name, NUL-terminated, padded to 8 bytes.
const direntHeader = 19

var dtypes = map[byte]string{0: "unknown", 1: "fifo", 2: "char", 4: "dir", 6: "block", 8: "file", 10: "symlink", 12: "socket"}

// parseDirents parses the n bytes getdents64 wrote into b. Every record
// must fit in what was written, be at least its header plus a NUL long,
// and hold a name of 1..255 bytes; anything else is ErrResult.
func parseDirents(b []byte) ([]Dirent, error) {
	var out []Dirent
	for off := 0; off < len(b); {
		if len(b)-off < direntHeader+1 {
			return nil, &vmerr.FormatError{Input: "getdents64 result", Struct: "linux_dirent64", Offset: int64(off), Err: fmt.Errorf("%w: %d bytes left, a record needs %d", ErrResult, len(b)-off, direntHeader+1)}
		}
		reclen := int(binary.LittleEndian.Uint16(b[off+16:]))
		if reclen < direntHeader+1 || reclen > len(b)-off {
			return nil, &vmerr.FormatError{Input: "getdents64 result", Struct: "linux_dirent64", Offset: int64(off), Err: fmt.Errorf("%w: d_reclen %d with %d bytes left", ErrResult, reclen, len(b)-off)}
		}
		name := b[off+direntHeader : off+reclen]
		i := 0
		for i < len(name) && name[i] != 0 {
			i++
		}
		if i == len(name) || i == 0 || i > 255 {
			return nil, &vmerr.FormatError{Input: "getdents64 result", Struct: "linux_dirent64", Offset: int64(off), Err: fmt.Errorf("%w: d_name of %d bytes without its NUL in a record of %d", ErrResult, i, reclen)}
		}
		t, ok := dtypes[b[off+18]]
		if !ok {
			t = fmt.Sprintf("type%d", b[off+18])
		}
		out = append(out, Dirent{Ino: binary.LittleEndian.Uint64(b[off:]), Type: t, Name: string(name[:i])})
		off += reclen
	}
	return out, nil
}

// Stat is the struct stat newfstatat returned.
type Stat struct {
	Dev     uint64    `json:"dev"`
	Ino     uint64    `json:"inode"`
	Nlink   uint64    `json:"links"`
	Mode    uint32    `json:"mode"` // st_mode: type and permission bits
	UID     uint32    `json:"uid"`
	GID     uint32    `json:"gid"`
	Rdev    uint64    `json:"rdev"`
	Size    int64     `json:"size"`
	Blksize int64     `json:"blksize"`
	Blocks  int64     `json:"blocks"`
	Atime   time.Time `json:"atime"`
	Mtime   time.Time `json:"mtime"`
	Ctime   time.Time `json:"ctime"`
}

// statSize is sizeof(struct stat) on x86-64 (arch/x86/include/uapi/asm/
// stat.h, ABI): dev, ino, nlink (u64); mode, uid, gid (u32), pad;
// rdev, size, blksize, blocks (u64/s64); atime, mtime, ctime (s64 sec,
// u64 nsec); 3 reserved s64.
const statSize = 144

func parseStat(b []byte) (Stat, error) {
	if len(b) != statSize {
		return Stat{}, &vmerr.FormatError{Input: "newfstatat result", Struct: "stat", Offset: 0, Err: fmt.Errorf("%w: %d bytes, want %d", ErrResult, len(b), statSize)}
	}
	u64 := func(o int) uint64 { return binary.LittleEndian.Uint64(b[o:]) }
	u32 := func(o int) uint32 { return binary.LittleEndian.Uint32(b[o:]) }
	ts := func(o int) time.Time {
		ns := u64(o + 8)
		if ns >= 1e9 {
			ns = 0
		}
		return time.Unix(int64(u64(o)), int64(ns)).UTC()
	}
	return Stat{
		Dev: u64(0), Ino: u64(8), Nlink: u64(16), Mode: u32(24), UID: u32(28), GID: u32(32),
		Rdev: u64(40), Size: int64(u64(48)), Blksize: int64(u64(56)), Blocks: int64(u64(64)),
		Atime: ts(72), Mtime: ts(88), Ctime: ts(104),
	}, nil
}

// FileMode is st_mode as an io/fs FileMode.
func (s Stat) FileMode() fs.FileMode {
	m := fs.FileMode(s.Mode & 0o777)
	switch s.Mode & 0o170000 {
	case 0o040000:
		m |= fs.ModeDir
	case 0o120000:
		m |= fs.ModeSymlink
	case 0o010000:
		m |= fs.ModeNamedPipe
	case 0o140000:
		m |= fs.ModeSocket
	case 0o020000:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case 0o060000:
		m |= fs.ModeDevice
	}
	if s.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if s.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if s.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// ModeString is st_mode as ls -l shows it ("drwxr-x---").
func (s Stat) ModeString() string {
	t := map[uint32]byte{0o040000: 'd', 0o120000: 'l', 0o010000: 'p', 0o140000: 's', 0o020000: 'c', 0o060000: 'b'}[s.Mode&0o170000]
	if t == 0 {
		t = '-'
	}
	var sb strings.Builder
	sb.WriteByte(t)
	const rwx = "rwxrwxrwx"
	for i := 0; i < 9; i++ {
		if s.Mode&(1<<(8-i)) != 0 {
			sb.WriteByte(rwx[i])
		} else {
			sb.WriteByte('-')
		}
	}
	b := []byte(sb.String())
	set := func(i int, bit uint32, on, off byte) {
		if s.Mode&bit != 0 {
			if b[i] == 'x' {
				b[i] = on
			} else {
				b[i] = off
			}
		}
	}
	set(3, 0o4000, 's', 'S')
	set(6, 0o2000, 's', 'S')
	set(9, 0o1000, 't', 'T')
	return string(b)
}
