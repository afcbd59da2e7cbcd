package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

var (
	// ErrMonitor is an answer of QEMU's monitor (HMP text) that does not
	// parse.
	ErrMonitor = vmerr.New("qemu: unexpected monitor answer", vmerr.ErrCorrupt)
	// ErrLayout is a guest whose RAM vmscope cannot place in the QEMU
	// process beyond doubt (a segment not mapped as a RAM block, a
	// mapping that is not the block's, a sample that disagrees with QEMU's
	// own reading): the process path refuses rather than read wrong bytes.
	ErrLayout = vmerr.New("qemu: cannot prove the guest's memory layout in the QEMU process", vmerr.ErrUnsupported)
	// ErrPermission is a QEMU process vmscope may not read.
	ErrPermission = errors.New("qemu: no permission to read the QEMU process's memory")
)

// ProcMemory reads guest-physical memory from the QEMU process itself:
// every RAM and ROM segment of the guest's flat memory view is a range of
// one of QEMU's mappings (a RAM block). It reads with process_vm_readv
// (or /proc/PID/mem where that system call is refused), without stopping
// the guest or attaching anything to QEMU. On a shared backing (a
// memory-backend-file or -memfd with share=on) it never touches a page
// the guest never wrote: those holes read as zeros from SEEK_DATA/SEEK_HOLE
// on the backing file, so reading does not allocate host memory.
//
// It is a vmi.Memory; reads may run concurrently.
type ProcMemory struct {
	pid    int
	segs   []procSeg
	ranges []vmi.Range
	mem    *os.File // /proc/PID/mem when process_vm_readv is refused
	files  []*os.File
	// Verified is how many sampled pages were compared with QEMU's own
	// reading (HMP xp) at attach, NonZero how many of them held data.
	Verified, NonZero int
}

// procSeg is a segment of guest-physical memory and where it is in QEMU.
type procSeg struct {
	pa, size uint64
	hva      uint64
	rom      bool
	name     string
	// backing is the shared backing's file (holes read as zeros), nil
	// for private memory; fileOff is the file offset of hva.
	backing *os.File
	fileOff uint64
}

// maxVerifyWords is the size of one verified sample (HMP xp words).
const maxVerifyWords = 64

// OpenProcMemory places the guest's RAM in the QEMU process pid using its
// monitor: the RAM and ROM segments of FlatView 0 of "info mtree -f", the
// host address of each from "gpa2hva", checked against /proc/PID/maps
// (a mapping that holds the segment, readable, not executable, of exactly
// the size of one of the RAM blocks of "info ramblock"). Then it checks
// that it may read the process and compares a few pages of every segment
// with QEMU's own reading (HMP xp). It refuses with ErrLayout when any of
// that does not hold and with ErrPermission (saying what is missing) when
// it may not read the process.
func OpenProcMemory(ctx context.Context, mon Monitor, pid int) (*ProcMemory, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("qemu: process memory: bad pid %d", pid)
	}
	if peer, ok := monitorPID(mon); ok && peer != pid {
		return nil, fmt.Errorf("%w: pid %d is not the QEMU of this QMP socket (its peer is pid %d)", ErrLayout, pid, peer)
	}
	mapsText, err := readCapped(fmt.Sprintf("/proc/%d/maps", pid), maxLayoutText+1)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("qemu: process memory: no process %d", pid)
		}
		if errors.Is(err, fs.ErrPermission) {
			return nil, permissionError(pid, err)
		}
		return nil, fmt.Errorf("qemu: process memory: %w", err)
	}
	maps, err := parseMaps(mapsText)
	if err != nil {
		return nil, err
	}
	if len(maps) == 0 {
		// /proc/PID/maps reads empty without ptrace access
		return nil, permissionError(pid, errors.New("/proc/PID/maps is empty"))
	}
	if mon == nil {
		return nil, errors.New("qemu: process memory: the layout needs QEMU's monitor")
	}
	rbText, err := mon.HMP(ctx, "info ramblock")
	if err != nil {
		return nil, err
	}
	blocks, err := parseRAMBlocks(rbText)
	if err != nil {
		return nil, err
	}
	mtText, err := mon.HMP(ctx, "info mtree -f")
	if err != nil {
		return nil, err
	}
	flat, err := parseFlatView(mtText)
	if err != nil {
		return nil, err
	}
	if len(flat) == 0 {
		return nil, fmt.Errorf("%w: the flat view has no RAM", ErrLayout)
	}
	pm := &ProcMemory{pid: pid}
	fail := func(err error) (*ProcMemory, error) {
		pm.Close()
		return nil, err
	}
	backings := map[uint64]*os.File{} // by mapping start
	for _, f := range flat {
		out, err := mon.HMP(ctx, fmt.Sprintf("gpa2hva %#x", f.Start))
		if err != nil {
			return fail(err)
		}
		hva, _, ok, err := parseGPA2HVA(out)
		if err != nil {
			return fail(err)
		}
		if !ok {
			return fail(fmt.Errorf("%w: QEMU says %s segment %#x-%#x (%s) is not RAM", ErrLayout, kindName(f.ROM), f.Start, f.Start+f.Size-1, f.Name))
		}
		m, err := placeSegment(f, hva, maps, blocks)
		if err != nil {
			return fail(err)
		}
		seg := procSeg{pa: f.Start, size: f.Size, hva: hva, rom: f.ROM, name: f.Name}
		if m.Shared() {
			b, ok := backings[m.Start]
			if !ok {
				if b, err = openBacking(pid, m); err != nil {
					return fail(err)
				}
				backings[m.Start] = b
				pm.files = append(pm.files, b)
			}
			seg.backing, seg.fileOff = b, m.Offset+(hva-m.Start)
		}
		pm.segs = append(pm.segs, seg)
	}
	sort.Slice(pm.segs, func(i, j int) bool { return pm.segs[i].pa < pm.segs[j].pa })
	var rs []vmi.Range
	for _, s := range pm.segs {
		rs = append(rs, vmi.Range{Start: vmi.PA(s.pa), Size: s.size})
	}
	pm.ranges = mergeRanges(rs)
	if err := pm.probeAccess(); err != nil {
		return fail(err)
	}
	if err := pm.verify(ctx, mon); err != nil {
		return fail(err)
	}
	return pm, nil
}

func kindName(rom bool) string {
	if rom {
		return "ROM"
	}
	return "RAM"
}

// placeSegment finds the mapping that holds flat-view segment f at host
// address hva and checks it is a RAM block's.
func placeSegment(f flatSeg, hva uint64, maps []mapping, blocks []ramBlock) (mapping, error) {
	i := sort.Search(len(maps), func(i int) bool { return maps[i].End > hva })
	if i == len(maps) || maps[i].Start > hva {
		return mapping{}, fmt.Errorf("%w: %s segment %#x (%s) is at host %#x, which the process does not map (is the pid QEMU's?)", ErrLayout, kindName(f.ROM), f.Start, f.Name, hva)
	}
	m := maps[i]
	end, ok := vmi.PA(hva).Add(f.Size)
	if !ok || uint64(end) > m.End {
		return mapping{}, fmt.Errorf("%w: segment %#x (%s, %d bytes) runs past its mapping %#x-%#x", ErrLayout, f.Start, f.Name, f.Size, m.Start, m.End)
	}
	if !m.Readable() || m.Exec() {
		return mapping{}, fmt.Errorf("%w: segment %#x (%s) is in mapping %#x-%#x %s, not a RAM block's (want readable, not executable)", ErrLayout, f.Start, f.Name, m.Start, m.End, m.Perms)
	}
	in := hva - m.Start
	for _, b := range blocks {
		round := (b.Total + b.PageSize - 1) / b.PageSize * b.PageSize
		if (m.Size() == b.Total || m.Size() == round) && in+f.Size <= b.Used {
			return m, nil
		}
	}
	return mapping{}, fmt.Errorf("%w: segment %#x (%s) is in mapping %#x-%#x of %d bytes, the size of no RAM block that holds it (hot-plugged or unknown memory?)", ErrLayout, f.Start, f.Name, m.Start, m.End, m.Size())
}

// openBacking opens the file behind a shared mapping, to find its holes:
// /proc/PID/map_files (needs CAP_SYS_ADMIN), else a descriptor QEMU holds
// open on it, else its path. The file opened must be the mapping's (its
// device and inode).
func openBacking(pid int, m mapping) (*os.File, error) {
	same := func(f *os.File) bool {
		var st unix.Stat_t
		if unix.Fstat(int(f.Fd()), &st) != nil {
			return false
		}
		return st.Ino == m.Inode && unix.Major(st.Dev) == m.Major && unix.Minor(st.Dev) == m.Minor
	}
	try := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			return nil
		}
		if same(f) {
			return f
		}
		f.Close()
		return nil
	}
	if f := try(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, m.Start, m.End)); f != nil {
		return f, nil
	}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	if ents, err := os.ReadDir(fdDir); err == nil {
		for i, e := range ents {
			if i > 1<<16 {
				break
			}
			if l, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && strings.TrimSuffix(l, " (deleted)") == strings.TrimSuffix(m.Path, " (deleted)") {
				if f := try(filepath.Join(fdDir, e.Name())); f != nil {
					return f, nil
				}
			}
		}
	}
	if strings.HasPrefix(m.Path, "/") && !strings.HasSuffix(m.Path, " (deleted)") {
		if f := try(m.Path); f != nil {
			return f, nil
		}
	}
	return nil, fmt.Errorf("%w: guest RAM is a shared mapping of %q (%d bytes) and vmscope cannot open that file to skip its holes (reading them would allocate host memory): it needs /proc/%d/map_files (CAP_SYS_ADMIN), QEMU's descriptor in /proc/%d/fd, or the file itself",
		ErrPermission, m.Path, m.Size(), pid, pid)
}

// permissionError says what reading QEMU's memory takes here.
func permissionError(pid int, err error) error {
	var why []string
	if os.Geteuid() != 0 {
		why = append(why, "run as root, or as QEMU's user with QEMU's capabilities a subset of yours")
	}
	if b, e := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); e == nil {
		switch s := strings.TrimSpace(string(b)); s {
		case "1", "2":
			why = append(why, "Yama ptrace_scope="+s+" requires CAP_SYS_PTRACE")
		case "3":
			why = append(why, "Yama ptrace_scope=3 forbids it to every process")
		}
	}
	if !hasCap(unix.CAP_SYS_PTRACE) {
		why = append(why, "this process lacks CAP_SYS_PTRACE")
	}
	if len(why) == 0 {
		why = append(why, "QEMU may run as another user or with capabilities this process lacks (libvirt), or under a seccomp filter")
	}
	return fmt.Errorf("%w (pid %d: %v): %s", ErrPermission, pid, err, strings.Join(why, "; "))
}

// hasCap reports whether this process has capability c in its effective set.
func hasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			x, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && x&(1<<uint(c)) != 0
		}
	}
	return false
}

// probeAccess reads a byte of the first segment: process_vm_readv, else
// /proc/PID/mem.
func (pm *ProcMemory) probeAccess() error {
	var b [1]byte
	s := pm.segs[0]
	_, err := pm.vmRead(b[:], s.hva)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return permissionError(pm.pid, err)
	}
	// process_vm_readv refused (ENOSYS under a seccomp filter, ...):
	// /proc/PID/mem
	f, ferr := os.Open(fmt.Sprintf("/proc/%d/mem", pm.pid))
	if ferr != nil {
		if errors.Is(ferr, fs.ErrPermission) {
			return permissionError(pm.pid, ferr)
		}
		return fmt.Errorf("qemu: process memory: process_vm_readv: %v; /proc/%d/mem: %w", err, pm.pid, ferr)
	}
	if _, ferr = f.ReadAt(b[:], int64(s.hva)); ferr != nil {
		f.Close()
		return fmt.Errorf("qemu: process memory: process_vm_readv: %v; /proc/%d/mem: %w", err, pm.pid, ferr)
	}
	pm.mem = f
	return nil
}

// verify compares sampled pages of every segment with HMP xp. A running
// guest may change a page between the two readings: a sample is read
// again (ours, xp, ours) up to a few times; one that never agrees fails.
// On a shared backing, samples are taken where the file has data (xp of a
// hole would allocate it).
func (pm *ProcMemory) verify(ctx context.Context, mon Monitor) error {
	const size = maxVerifyWords * 8
	ours := make([]byte, size)
	for _, s := range pm.segs {
		if s.size < size {
			continue
		}
		// one sample of a small segment (ROM, VGA), three of RAM
		at := []uint64{0}
		if s.size >= 64<<20 {
			at = append(at, (s.size/2)&^0xfff, s.size-size)
		}
		for _, at := range at {
			pa := s.pa + at
			if s.backing != nil {
				d, err := unix.Seek(int(s.backing.Fd()), int64(s.fileOff+at), unix.SEEK_DATA)
				if err != nil || uint64(d) < s.fileOff || uint64(d)-s.fileOff > s.size-size {
					continue // no data from here on
				}
				pa = s.pa + (uint64(d) - s.fileOff)
			}
			agreed := false
			var xp []byte
			for try := 0; try < 5 && !agreed; try++ {
				if _, err := pm.ReadPhys(ctx, ours, vmi.PA(pa)); err != nil {
					return err
				}
				out, err := mon.HMP(ctx, fmt.Sprintf("xp /%dgx %#x", maxVerifyWords, pa))
				if err != nil {
					return err
				}
				if xp, err = parseXP(out, pa, maxVerifyWords); err != nil {
					return err
				}
				agreed = bytes.Equal(ours, xp)
				if !agreed {
					time.Sleep(time.Duration(try+1) * time.Millisecond)
				}
			}
			if !agreed {
				return fmt.Errorf("%w: guest-physical %#x (%s) reads differently from the process than QEMU's xp", ErrLayout, pa, s.name)
			}
			pm.Verified++
			if !allZero(xp) {
				pm.NonZero++
			}
		}
	}
	if pm.Verified == 0 {
		return fmt.Errorf("%w: no page could be compared with QEMU's xp", ErrLayout)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// PID is the QEMU process.
func (pm *ProcMemory) PID() int { return pm.pid }

// Ranges lists the guest-physical RAM and ROM ranges.
func (pm *ProcMemory) Ranges() []vmi.Range { return append([]vmi.Range(nil), pm.ranges...) }

// Method says how it reads: "process_vm_readv" or "/proc/PID/mem", and
// whether any segment is a shared backing read hole-aware.
func (pm *ProcMemory) Method() string {
	m := "process_vm_readv"
	if pm.mem != nil {
		m = "/proc/PID/mem"
	}
	if len(pm.files) > 0 {
		m += ", shared backing (holes skipped)"
	}
	return m
}

// Close closes the files it holds.
func (pm *ProcMemory) Close() error {
	var errs []error
	for _, f := range pm.files {
		errs = append(errs, f.Close())
	}
	pm.files = nil
	if pm.mem != nil {
		errs = append(errs, pm.mem.Close())
		pm.mem = nil
	}
	return errors.Join(errs...)
}

// ReadAt implements io.ReaderAt over guest-physical addresses.
func (pm *ProcMemory) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("qemu: read at negative offset %d", off)
	}
	return pm.ReadPhys(context.Background(), p, vmi.PA(off))
}

// readChunk bounds one system call, so that a cancelled context is seen.
const readChunk = 64 << 20

// ReadPhys reads guest-physical memory at pa into p. A read that meets a
// hole in the memory map returns the bytes before it and a *vmi.HoleError.
func (pm *ProcMemory) ReadPhys(ctx context.Context, p []byte, pa vmi.PA) (int, error) {
	n, hole := presentPrefix(pm.ranges, pa, len(p))
	done := 0
	for done < n {
		if done > 0 && ctx.Err() != nil {
			return done, ctx.Err()
		}
		a := uint64(pa) + uint64(done)
		i := sort.Search(len(pm.segs), func(i int) bool { return pm.segs[i].pa+pm.segs[i].size > a })
		if i == len(pm.segs) || pm.segs[i].pa > a {
			return done, &vmi.HoleError{Addr: vmi.PA(a)}
		}
		s := pm.segs[i]
		k := int(min(uint64(n-done), s.pa+s.size-a, readChunk))
		if err := pm.readSeg(p[done:done+k], s, a-s.pa); err != nil {
			return done, err
		}
		done += k
	}
	return done, hole
}

// readSeg reads p at offset off of segment s, holes of a shared backing
// as zeros.
func (pm *ProcMemory) readSeg(p []byte, s procSeg, off uint64) error {
	if s.backing == nil {
		return pm.readFull(p, s.hva+off)
	}
	fd := int(s.backing.Fd())
	for len(p) > 0 {
		pos := int64(s.fileOff + off)
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO): // a hole up to the end of the file
			clear(p)
			return nil
		case err != nil:
			return fmt.Errorf("qemu: process memory: SEEK_DATA on the shared backing: %w", err)
		case d > pos:
			z := int(min(uint64(d-pos), uint64(len(p))))
			clear(p[:z])
			p, off = p[z:], off+uint64(z)
			continue
		}
		// data at pos: up to the next hole (reads within one page need
		// not ask)
		k := len(p)
		if pg := 4096 - int(pos&4095); k > pg {
			h, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
			if err != nil {
				return fmt.Errorf("qemu: process memory: SEEK_HOLE on the shared backing: %w", err)
			}
			k = int(min(uint64(h-pos), uint64(k)))
		}
		if err := pm.readFull(p[:k], s.hva+off); err != nil {
			return err
		}
		p, off = p[k:], off+uint64(k)
	}
	return nil
}

// readFull reads all of p from the process at host address hva.
func (pm *ProcMemory) readFull(p []byte, hva uint64) error {
	for len(p) > 0 {
		var n int
		var err error
		if pm.mem != nil {
			n, err = pm.mem.ReadAt(p, int64(hva))
		} else {
			n, err = pm.vmRead(p, hva)
		}
		if err != nil {
			return fmt.Errorf("qemu: reading QEMU (pid %d) at host %#x: %w", pm.pid, hva, err)
		}
		if n == 0 {
			return fmt.Errorf("qemu: reading QEMU (pid %d) at host %#x: short read", pm.pid, hva)
		}
		p, hva = p[n:], hva+uint64(n)
	}
	return nil
}

func (pm *ProcMemory) vmRead(p []byte, hva uint64) (int, error) {
	local := []unix.Iovec{{Base: (*byte)(unsafe.Pointer(&p[0]))}}
	local[0].SetLen(len(p))
	remote := []unix.RemoteIovec{{Base: uintptr(hva), Len: len(p)}}
	return unix.ProcessVMReadv(pm.pid, local, remote, 0)
}

// readCapped reads at most max bytes of the file at path (a longer file
// is cut there, and its parser refuses it by size) without allocating
// more.
func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}
