package inject

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Caps on what the guest returns: a result over its cap is an error,
// never an allocation.
const (
	maxEntries    = 1 << 20 // entries of one directory
	maxGetdents   = 1 << 16 // getdents64 calls for one directory
	defaultMaxCat = 16 << 20
	// defaultMaxCatFull is cat's cap under protect full, where every
	// byte is copied by stepped instructions (about 1,500 steps per 4
	// KiB page with the rep copies run to their end, plus about 3,000 per
	// 16 KiB read): a larger file needs --max-bytes.
	defaultMaxCatFull = 1 << 20
	maxProcFile       = 1 << 20 // one /proc file (net tables)
	maxProcSmall      = 64 << 10
	maxProcs          = 1 << 16
)

// Entry is a listed directory entry; with ls -l its stat.
type Entry struct {
	Dirent
	Stat *Stat `json:"stat,omitempty"`
}

// Proc is a process as /proc shows it.
type Proc struct {
	PID   int    `json:"pid"`
	PPID  int    `json:"ppid"`
	UID   uint32 `json:"uid"`
	State string `json:"state"`
	Comm  string `json:"comm"`
	Args  string `json:"args"` // cmdline, NULs as spaces; "[comm]" when empty
}

// Socket is a line of /proc/net/{tcp,tcp6,udp,udp6,unix}.
type Socket struct {
	Proto   string `json:"proto"`
	Local   string `json:"local"`
	Remote  string `json:"remote,omitempty"`
	State   string `json:"state"`
	Inode   uint64 `json:"inode"`
	UnixPth string `json:"path,omitempty"`
}

// KillResult is what kill did.
type KillResult struct {
	PID    int `json:"pid"`
	Signal int `json:"signal"`
}

func runOp(ctx context.Context, s *Session, op Op, res *Result) error {
	switch op.Kind {
	case "ls":
		ents, err := s.list(ctx, op.Path)
		if err != nil {
			return err
		}
		if op.Long {
			for i := range ents {
				if ents[i].Name == "." || ents[i].Name == ".." {
					continue
				}
				st, err := s.stat(ctx, path.Join(op.Path, ents[i].Name))
				if err != nil {
					return fmt.Errorf("inject: stat %s: %w", ents[i].Name, err)
				}
				ents[i].Stat = &st
			}
		}
		res.Entries = ents
	case "stat":
		st, err := s.stat(ctx, op.Path)
		if err != nil {
			return err
		}
		res.Stat = &st
	case "cat":
		max := op.MaxBytes
		if max <= 0 {
			max = defaultMaxCat
			if s.checker != nil {
				max = defaultMaxCatFull
			}
		}
		if s.checker != nil {
			// stepped, a file over the cap is refused before its bytes
			// are copied (a /proc file says 0 and is read to its cap)
			st, err := s.stat(ctx, op.Path)
			if err != nil {
				return err
			}
			if st.Size > max {
				return fmt.Errorf("%w: %s is %d bytes, over the cap of %d with protect full (every byte copied is single-stepped; raise --max-bytes)", ErrResult, op.Path, st.Size, max)
			}
			if s.mapLater > 0 {
				if err := s.mapBuffer(ctx, s.mapLater); err != nil {
					return err
				}
				s.mapLater = 0
			}
		}
		b, err := s.readFile(ctx, op.Path, max)
		if err != nil {
			return err
		}
		res.Data, res.Size = b, int64(len(b))
		sum := sha256.Sum256(b)
		res.SHA256 = hex.EncodeToString(sum[:])
	case "ps":
		procs, err := s.ps(ctx)
		if err != nil {
			return err
		}
		res.Procs = procs
	case "netstat":
		for _, f := range []string{"tcp", "tcp6", "udp", "udp6", "unix"} {
			b, err := s.readFile(ctx, "/proc/net/"+f, maxProcFile)
			if errors.Is(err, Errno(2)) {
				continue // no IPv6, no unix sockets
			}
			if err != nil {
				return err
			}
			socks, err := parseNet(f, b)
			if err != nil {
				return err
			}
			res.Sockets = append(res.Sockets, socks...)
		}
	case "kill":
		if _, err := s.Call(ctx, sysKill, uint64(op.PID), uint64(op.Signal)); err != nil {
			return err
		}
		res.Killed = &KillResult{PID: op.PID, Signal: op.Signal}
	default:
		return fmt.Errorf("inject: unknown operation %q", op.Kind)
	}
	return nil
}

// open opens path in the dummy and returns its descriptor.
func (s *Session) open(ctx context.Context, p string, flags uint64) (uint64, error) {
	a, err := s.putPath(ctx, p)
	if err != nil {
		return 0, err
	}
	fd, err := s.Call(ctx, sysOpenat, atFDCWDArg, a, flags, 0)
	if err != nil {
		return 0, fmt.Errorf("inject: open %s: %w", p, err)
	}
	if fd > 1<<20 {
		return 0, fmt.Errorf("%w: openat returned fd %d", ErrResult, fd)
	}
	return fd, nil
}

// closeFD closes a descriptor the operation opened; it is always called,
// so the dummy's descriptor table ends as it began.
func (s *Session) closeFD(ctx context.Context, fd uint64, err *error) {
	// end() closes any descriptor a failed close leaves (the bitmap)
	if _, cerr := s.Call(ctx, sysClose, fd); cerr != nil && *err == nil {
		*err = fmt.Errorf("inject: close: %w", cerr)
	}
}

// list reads directory p with getdents64.
func (s *Session) list(ctx context.Context, p string) (out []Entry, err error) {
	fd, err := s.open(ctx, p, oRdonly|oDirectory|oCloexec)
	if err != nil {
		return nil, err
	}
	defer s.closeFD(ctx, fd, &err)
	for i := 0; ; i++ {
		if i == maxGetdents {
			return nil, fmt.Errorf("%w: directory %s: more than %d getdents64 calls", ErrResult, p, maxGetdents)
		}
		n, err := s.Call(ctx, sysGetdents64, fd, uint64(s.buf)+s.dataOff(), s.bufLen-s.dataOff())
		if err != nil {
			return nil, fmt.Errorf("inject: getdents64 %s: %w", p, err)
		}
		if n == 0 {
			break
		}
		if n > s.bufLen-s.dataOff() {
			return nil, fmt.Errorf("%w: getdents64 returned %d bytes for a buffer of %d", ErrResult, n, s.bufLen-s.dataOff())
		}
		b, err := s.readBuf(s.dataOff(), n)
		if err != nil {
			return nil, err
		}
		ds, err := parseDirents(b)
		if err != nil {
			return nil, err
		}
		if len(out)+len(ds) > maxEntries {
			return nil, fmt.Errorf("%w: directory %s: more than %d entries", ErrResult, p, maxEntries)
		}
		for _, d := range ds {
			out = append(out, Entry{Dirent: d})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// stat runs newfstatat(AT_FDCWD, p, &st, AT_SYMLINK_NOFOLLOW).
func (s *Session) stat(ctx context.Context, p string) (Stat, error) {
	a, err := s.putPath(ctx, p)
	if err != nil {
		return Stat{}, err
	}
	if _, err := s.Call(ctx, sysNewfstatat, atFDCWDArg, a, uint64(s.buf)+s.dataOff(), atSymlinkNofollow); err != nil {
		return Stat{}, fmt.Errorf("inject: stat %s: %w", p, err)
	}
	b, err := s.readBuf(s.dataOff(), statSize)
	if err != nil {
		return Stat{}, err
	}
	return parseStat(b)
}

// readFile reads file p whole; more than max bytes is an error.
func (s *Session) readFile(ctx context.Context, p string, max int64) (out []byte, err error) {
	fd, err := s.open(ctx, p, oRdonly|oCloexec)
	if err != nil {
		return nil, err
	}
	defer s.closeFD(ctx, fd, &err)
	chunk := s.bufLen - s.dataOff()
	for {
		n, err := s.Call(ctx, sysRead, fd, uint64(s.buf)+s.dataOff(), chunk)
		if err != nil {
			return nil, fmt.Errorf("inject: read %s: %w", p, err)
		}
		if n == 0 {
			return out, nil
		}
		if n > chunk {
			return nil, fmt.Errorf("%w: read returned %d bytes for a buffer of %d", ErrResult, n, chunk)
		}
		if int64(len(out))+int64(n) > max {
			return nil, fmt.Errorf("%w: %s is larger than the cap of %d bytes", ErrResult, p, max)
		}
		b, err := s.readBuf(s.dataOff(), n)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
}

// ps lists /proc and reads each process's stat and cmdline; a process
// that ends in between is left out.
func (s *Session) ps(ctx context.Context) ([]Proc, error) {
	ents, err := s.list(ctx, "/proc")
	if err != nil {
		return nil, err
	}
	var out []Proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name)
		if err != nil || pid <= 0 || e.Type != "dir" {
			continue
		}
		if len(out) == maxProcs {
			return nil, fmt.Errorf("%w: more than %d processes", ErrResult, maxProcs)
		}
		dir := "/proc/" + e.Name
		st, err := s.stat(ctx, dir)
		if gone(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		b, err := s.readFile(ctx, dir+"/stat", maxProcSmall)
		if gone(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		p, err := parseProcStat(b)
		if err != nil {
			return nil, fmt.Errorf("inject: %s/stat: %w", dir, err)
		}
		p.UID = st.UID
		cl, err := s.readFile(ctx, dir+"/cmdline", maxProcSmall)
		if gone(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		p.Args = strings.TrimRight(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '})), " ")
		if p.Args == "" {
			p.Args = "[" + p.Comm + "]"
		}
		out = append(out, p)
	}
	return out, nil
}

func gone(err error) bool { return errors.Is(err, Errno(2)) || errors.Is(err, Errno(3)) }

// parseProcStat reads pid, comm, state and ppid of /proc/PID/stat; comm
// is between the first '(' and the last ')'.
func parseProcStat(b []byte) (Proc, error) {
	s := string(b)
	i, j := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if i < 1 || j < i || j-i-1 > 64 {
		return Proc{}, fmt.Errorf("%w: /proc stat %q", ErrResult, trunc(s))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:i]))
	f := strings.Fields(s[j+1:])
	if err != nil || len(f) < 2 {
		return Proc{}, fmt.Errorf("%w: /proc stat %q", ErrResult, trunc(s))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Proc{}, fmt.Errorf("%w: /proc stat ppid %q", ErrResult, f[1])
	}
	return Proc{PID: pid, PPID: ppid, State: f[0], Comm: s[i+1 : j]}, nil
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

var tcpStates = map[string]string{
	"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
	"06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}

// parseNet parses a /proc/net table (tcp, tcp6, udp, udp6: "sl local
// rem st ... inode"; unix: "Num RefCount Protocol Flags Type St Inode
// Path").
func parseNet(proto string, b []byte) ([]Socket, error) {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	var out []Socket
	for n, l := range lines[1:] {
		f := strings.Fields(l)
		if proto == "unix" {
			if len(f) < 7 {
				return nil, fmt.Errorf("%w: /proc/net/unix line %d: %q", ErrResult, n+2, trunc(l))
			}
			ino, _ := strconv.ParseUint(f[6], 10, 64)
			sk := Socket{Proto: "unix", State: unixState(f[4], f[5], f[3]), Inode: ino}
			if len(f) > 7 {
				sk.UnixPth = f[7]
			}
			out = append(out, sk)
			continue
		}
		if len(f) < 10 {
			return nil, fmt.Errorf("%w: /proc/net/%s line %d: %q", ErrResult, proto, n+2, trunc(l))
		}
		local, err1 := hexAddr(f[1])
		remote, err2 := hexAddr(f[2])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("%w: /proc/net/%s line %d: %v", ErrResult, proto, n+2, err)
		}
		st := tcpStates[f[3]]
		if strings.HasPrefix(proto, "udp") {
			st = map[string]string{"01": "ESTABLISHED", "07": ""}[f[3]]
		}
		ino, _ := strconv.ParseUint(f[9], 10, 64)
		out = append(out, Socket{Proto: proto, Local: local, Remote: remote, State: st, Inode: ino})
	}
	return out, nil
}

func unixState(typ, st, flags string) string {
	t := map[string]string{"0001": "STREAM", "0002": "DGRAM", "0005": "SEQPACKET"}[typ]
	if flags == "00010000" {
		return t + " LISTENING"
	}
	if st == "03" {
		return t + " CONNECTED"
	}
	return t
}

// hexAddr turns "0100007F:1F90" or a 32-digit IPv6 address into
// "127.0.0.1:8080" or "[::1]:8080" as netstat -an shows them ("::" for
// all-zero, "0.0.0.0").
func hexAddr(s string) (string, error) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(a) != 8 && len(a) != 32) {
		return "", fmt.Errorf("address %q", trunc(s))
	}
	raw, err := hex.DecodeString(a)
	if err != nil {
		return "", fmt.Errorf("address %q", trunc(s))
	}
	// each 32-bit word is in host (little-endian) order
	ip := make([]byte, len(raw))
	for w := 0; w < len(raw); w += 4 {
		for i := 0; i < 4; i++ {
			ip[w+i] = raw[w+3-i]
		}
	}
	if len(ip) == 4 {
		return fmt.Sprintf("%d.%d.%d.%d:%d", ip[0], ip[1], ip[2], ip[3], port), nil
	}
	var groups []string
	for i := 0; i < 16; i += 2 {
		groups = append(groups, strconv.FormatUint(uint64(ip[i])<<8|uint64(ip[i+1]), 16))
	}
	return compressIPv6(groups) + ":" + strconv.FormatUint(port, 10), nil
}

// compressIPv6 writes 8 hex groups with the longest run of zeros as "::".
func compressIPv6(g []string) string {
	best, bestLen := -1, 0
	for i := 0; i < len(g); {
		if g[i] != "0" {
			i++
			continue
		}
		j := i
		for j < len(g) && g[j] == "0" {
			j++
		}
		if j-i > bestLen {
			best, bestLen = i, j-i
		}
		i = j
	}
	if bestLen < 2 {
		return strings.Join(g, ":")
	}
	return strings.Join(g[:best], ":") + "::" + strings.Join(g[best+bestLen:], ":")
}

// NetstatLine is a socket as `netstat -an` prints its columns Proto,
// Local Address, Foreign Address and State (tcp6 as tcp, port 0 as *).
func NetstatLine(s Socket) string {
	proto := strings.TrimSuffix(s.Proto, "6")
	star := func(a string) string {
		if strings.HasSuffix(a, ":0") {
			return strings.TrimSuffix(a, "0") + "*"
		}
		return a
	}
	return strings.TrimSpace(proto + " " + star(s.Local) + " " + star(s.Remote) + " " + s.State)
}
