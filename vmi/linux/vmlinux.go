package linux

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// ErrKernelImage: a --vmlinux file is neither a vmlinux ELF nor a bzImage
// this package can unpack.
var ErrKernelImage = errors.New("linux: unusable kernel image")

// maxVmlinux bounds the unpacked size of a bzImage's payload.
const maxVmlinux = 1 << 30

// KernelImage is what a kernel build's file gives when memory is not
// enough: its BTF and, when the ELF has a symbol table (a debug vmlinux),
// a System.map made from it. The distribution's vmlinuz (a bzImage whose
// payload is a stripped vmlinux) gives BTF only.
type KernelImage struct {
	BTF       []byte // the .BTF section; nil if the build has none
	SystemMap []byte // "ADDR TYPE NAME" lines from .symtab; nil if stripped
	Source    string // "vmlinux ELF" or "bzImage (lz4)"...
}

// Options returns the discovery options the image provides.
func (ki *KernelImage) Options() []Option {
	var o []Option
	if ki.BTF != nil {
		o = append(o, WithBTF(bytes.NewReader(ki.BTF)))
	}
	if ki.SystemMap != nil {
		o = append(o, WithSystemMap(bytes.NewReader(ki.SystemMap)))
	}
	return o
}

// ReadKernelImage reads a vmlinux ELF, or a bzImage (vmlinuz) whose payload
// is compressed with gzip, bzip2, xz, zstd or lz4. The ELF is read in
// place (debug/elf over the file): only its headers, .BTF and symbol table
// are read. A bzImage's payload is streamed from the file through its
// decompressor into memory, bounded by maxVmlinux.
func ReadKernelImage(path string) (*KernelImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var r io.ReaderAt = f
	src := "vmlinux ELF"
	b, name, err := unpackIfBzImage(f, fi.Size(), path)
	if err != nil {
		return nil, err
	}
	if b != nil {
		r, src = bytes.NewReader(b), name
	}
	e, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not an ELF vmlinux nor a bzImage: %v", ErrKernelImage, path, err)
	}
	ki := &KernelImage{Source: src}
	if s := e.Section(".BTF"); s != nil {
		if s.Type == elf.SHT_NOBITS || s.Size > maxBTFSection {
			return nil, fmt.Errorf("%w: %s: .BTF section of %d bytes", ErrKernelImage, path, s.Size)
		}
		if ki.BTF, err = s.Data(); err != nil {
			return nil, fmt.Errorf("%w: %s: .BTF section: %v", ErrKernelImage, path, err)
		}
	}
	if syms, err := e.Symbols(); err == nil && len(syms) > 0 {
		ki.SystemMap = systemMap(e, syms)
	}
	if ki.BTF == nil && ki.SystemMap == nil {
		return nil, fmt.Errorf("%w: %s has neither BTF nor a symbol table", ErrKernelImage, path)
	}
	return ki, nil
}

// unpackIfBzImage returns the decompressed vmlinux and its source name
// when f (of size bytes, the file at path) is a bzImage (its setup header
// says "HdrS"), and nil with no error when it is not.
func unpackIfBzImage(f io.ReaderAt, size int64, path string) ([]byte, string, error) {
	var hdr [0x250]byte
	if size <= int64(len(hdr)) {
		return nil, "", nil
	}
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return nil, "", nil
	}
	b, name, err := unpackBzImage(f, size, hdr[:])
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	return b, name, nil
}

// maxBTFSection bounds the .BTF section read from a kernel image (the
// kernel's own is a few MiB).
const maxBTFSection = 64 << 20

// unpackBzImage returns the vmlinux inside a bzImage of size bytes whose
// first 0x250 bytes are hdr: the payload the boot protocol's setup header
// locates (payload_offset/length from the start of the protected-mode
// code), decompressed by its magic.
func unpackBzImage(f io.ReaderAt, size int64, hdr []byte) ([]byte, string, error) {
	setup := int64(hdr[0x1f1])
	if setup == 0 {
		setup = 4
	}
	start := (setup + 1) * 512
	off := int64(binary.LittleEndian.Uint32(hdr[0x248:]))
	n := int64(binary.LittleEndian.Uint32(hdr[0x24c:]))
	if n < 8 || start+off+n > size {
		return nil, "", fmt.Errorf("%w: bzImage payload %d+%d outside the %d-byte file", ErrKernelImage, off, n, size)
	}
	payload := io.NewSectionReader(f, start+off, n)
	var magic [6]byte
	if _, err := payload.ReadAt(magic[:], 0); err != nil && err != io.EOF {
		return nil, "", fmt.Errorf("%w: bzImage payload: %v", ErrKernelImage, err)
	}
	p := magic[:]
	var r io.Reader
	var name string
	switch {
	case bytes.HasPrefix(p, []byte{0x1f, 0x8b}):
		g, err := gzip.NewReader(payload)
		if err != nil {
			return nil, "", fmt.Errorf("%w: gzip payload: %v", ErrKernelImage, err)
		}
		r, name = g, "gzip"
	case bytes.HasPrefix(p, []byte("BZh")):
		r, name = bzip2.NewReader(payload), "bzip2"
	case bytes.HasPrefix(p, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		x, err := xz.NewReader(payload)
		if err != nil {
			return nil, "", fmt.Errorf("%w: xz payload: %v", ErrKernelImage, err)
		}
		r, name = x, "xz"
	case bytes.HasPrefix(p, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		z, err := zstd.NewReader(payload, zstd.WithDecoderMaxMemory(maxVmlinux))
		if err != nil {
			return nil, "", fmt.Errorf("%w: zstd payload: %v", ErrKernelImage, err)
		}
		defer z.Close()
		r, name = z, "zstd"
	case bytes.HasPrefix(p, []byte{0x02, 0x21, 0x4c, 0x18}):
		r, name = lz4.NewReader(payload), "lz4"
	default:
		return nil, "", fmt.Errorf("%w: bzImage payload compression % x not supported", ErrKernelImage, p[:4])
	}
	out, err := io.ReadAll(io.LimitReader(r, maxVmlinux+1))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s payload: %v", ErrKernelImage, name, err)
	}
	if len(out) > maxVmlinux {
		return nil, "", fmt.Errorf("%w: %s payload unpacks past %d bytes", ErrKernelImage, name, maxVmlinux)
	}
	return out, "bzImage (" + name + ")", nil
}

// systemMap writes the ELF's named symbols as System.map lines, with the
// type letters nm gives: text T, read-only data R, data D, bss B, absolute
// A; lower case for local symbols.
func systemMap(e *elf.File, syms []elf.Symbol) []byte {
	sort.SliceStable(syms, func(i, j int) bool { return syms[i].Value < syms[j].Value })
	var b bytes.Buffer
	for _, s := range syms {
		if s.Name == "" || elf.ST_TYPE(s.Info) == elf.STT_FILE || elf.ST_TYPE(s.Info) == elf.STT_SECTION {
			continue
		}
		c := byte('A')
		if int(s.Section) > 0 && int(s.Section) < len(e.Sections) {
			sec := e.Sections[s.Section]
			switch {
			case sec.Flags&elf.SHF_EXECINSTR != 0:
				c = 'T'
			case sec.Type == elf.SHT_NOBITS:
				c = 'B'
			case sec.Flags&elf.SHF_WRITE != 0:
				c = 'D'
			default:
				c = 'R'
			}
		}
		if elf.ST_BIND(s.Info) == elf.STB_LOCAL {
			c += 'a' - 'A'
		}
		fmt.Fprintf(&b, "%016x %c %s\n", s.Value, c, s.Name)
	}
	return b.Bytes()
}

// ReadVmlinux returns the kernel ELF of a bzImage (vmlinuz), decompressed
// (on x86 the KASLR relocation table follows the ELF in it), or the bytes
// of a vmlinux ELF file; at most 1 GiB.
func ReadVmlinux(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if b, _, err := unpackIfBzImage(f, fi.Size(), path); b != nil || err != nil {
		return b, err
	}
	if fi.Size() > maxVmlinux {
		return nil, fmt.Errorf("%w: %s: %d bytes", ErrKernelImage, path, fi.Size())
	}
	return io.ReadAll(f)
}
