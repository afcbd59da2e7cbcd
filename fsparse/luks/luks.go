// Package luks recognises encrypted volumes and reads what their headers
// say in the clear: LUKS1 and LUKS2 (version, UUID, cipher and mode, key
// size, the active keyslots) and BitLocker (by its "-FVE-FS-" signature).
// Nothing is decrypted: an encrypted volume is reported, never scanned.
//
// Invariants: the LUKS2 JSON area is read only up to the header size the
// format allows (4 MiB) and only when the binary header's checksum
// (SHA-256 over the header with the checksum field zeroed) matches; of the
// primary and secondary headers the valid one with the highest sequence
// number is used. Counts of keyslots and segments are bounded. Errors name
// the structure and its offset.
package luks

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

// Sentinel errors.
var (
	ErrCorrupt      = vmerr.New("luks: corrupt header", vmerr.ErrCorrupt)
	ErrUnsupported  = vmerr.New("luks: unsupported header", vmerr.ErrUnsupported)
	ErrNotEncrypted = vmerr.New("luks: no encrypted volume signature", vmerr.ErrNotPresent)
)

const (
	luks1HeaderSize = 592
	luks2BinSize    = 4096
	maxLUKS2Header  = 4 << 20 // the largest LUKS2 header size (binary + JSON)
	maxKeyslots     = 32
	maxSegments     = 32
	luks1Slots      = 8
	slotActive      = 0x00AC71F3
	slotInactive    = 0x0000DEAD
)

var luksMagic = []byte("LUKS\xba\xbe")
var luks2SecondMagic = []byte("SKUL\xba\xbe")

// Header is what an encrypted volume's header says in the clear.
type Header struct {
	Kind    string `json:"kind"` // "LUKS1", "LUKS2", "BitLocker"
	Version int    `json:"version"`
	UUID    string `json:"uuid,omitempty"`
	Label   string `json:"label,omitempty"`
	// Cipher and Mode: "aes" and "xts-plain64" (LUKS2's
	// "aes-xts-plain64" split at its first dash).
	Cipher  string `json:"cipher,omitempty"`
	Mode    string `json:"mode,omitempty"`
	KeyBits int    `json:"key_bits,omitempty"`
	Hash    string `json:"hash,omitempty"`
	// PayloadOffset: the first byte of encrypted data (the first data
	// segment's offset for LUKS2).
	PayloadOffset int64 `json:"payload_offset,omitempty"`
	// Seqid: LUKS2 header sequence number; HeaderSize: LUKS2 header size.
	Seqid      uint64    `json:"seqid,omitempty"`
	HeaderSize int64     `json:"header_size,omitempty"`
	Keyslots   []Keyslot `json:"keyslots,omitempty"` // the active ones, by index
	// Problems: a secondary LUKS2 header that is invalid, and the like.
	Problems []string `json:"problems,omitempty"`
}

// Keyslot is one active keyslot.
type Keyslot struct {
	Index   int    `json:"index"`
	Type    string `json:"type,omitempty"` // LUKS2: "luks2"
	KeyBits int    `json:"key_bits,omitempty"`
	KDF     string `json:"kdf,omitempty"` // "pbkdf2", "argon2id", ...
	// Iterations: LUKS1's PBKDF2 iterations; LUKS2's PBKDF2 iterations or
	// Argon2 time cost.
	Iterations int64 `json:"iterations,omitempty"`
}

// Active is the number of active keyslots.
func (h *Header) Active() int { return len(h.Keyslots) }

// CipherSpec is "cipher-mode".
func (h *Header) CipherSpec() string {
	if h.Mode == "" {
		return h.Cipher
	}
	return h.Cipher + "-" + h.Mode
}

// Probe reports which encrypted format, if any, the first bytes of a volume
// (at least 512) carry: "LUKS1", "LUKS2", "BitLocker" or "".
func Probe(head []byte) string {
	switch {
	case len(head) >= 8 && bytes.Equal(head[:6], luksMagic):
		switch binary.BigEndian.Uint16(head[6:]) {
		case 1:
			return "LUKS1"
		case 2:
			return "LUKS2"
		}
		return "LUKS"
	case len(head) >= 11 && string(head[3:11]) == "-FVE-FS-":
		return "BitLocker"
	}
	return ""
}

// Read reads the header of the encrypted volume dev of size bytes.
func Read(dev io.ReaderAt, size int64) (*Header, error) {
	head := make([]byte, luks2BinSize)
	n, err := dev.ReadAt(head, 0)
	if n < 512 {
		return nil, fmt.Errorf("luks: reading the first sector: %w", errOr(err))
	}
	head = head[:n]
	switch Probe(head) {
	case "LUKS1":
		return readLUKS1(head)
	case "LUKS2":
		return readLUKS2(dev, size)
	case "BitLocker":
		return readBitLocker(head)
	case "LUKS":
		return nil, fmt.Errorf("luks: header at offset 0: version %d: %w", binary.BigEndian.Uint16(head[6:]), ErrUnsupported)
	}
	return nil, ErrNotEncrypted
}

func errOr(err error) error {
	if err != nil && err != io.EOF {
		return err
	}
	return io.ErrUnexpectedEOF
}

func corrupt(structure string, off int64, format string, args ...any) error {
	return vmerr.Corrupt(ErrCorrupt, "luks: "+structure, off, format, args...)
}

// cstr is a NUL-terminated field, which must be printable.
func cstr(b []byte) (string, bool) {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return "", false
		}
	}
	return string(b), true
}

func readLUKS1(b []byte) (*Header, error) {
	if len(b) < luks1HeaderSize {
		return nil, corrupt("LUKS1 header", 0, "%d bytes, want %d", len(b), luks1HeaderSize)
	}
	h := &Header{Kind: "LUKS1", Version: 1}
	var ok [4]bool
	h.Cipher, ok[0] = cstr(b[8:40])
	h.Mode, ok[1] = cstr(b[40:72])
	h.Hash, ok[2] = cstr(b[72:104])
	h.UUID, ok[3] = cstr(b[168:208])
	for i, good := range ok {
		if !good {
			return nil, corrupt("LUKS1 header", []int64{8, 40, 72, 168}[i], "field is not printable text")
		}
	}
	h.PayloadOffset = int64(binary.BigEndian.Uint32(b[104:])) * 512
	keyBytes := binary.BigEndian.Uint32(b[108:])
	if keyBytes == 0 || keyBytes > 1024 {
		return nil, corrupt("LUKS1 header", 108, "key of %d bytes", keyBytes)
	}
	h.KeyBits = int(keyBytes) * 8
	for i := 0; i < luks1Slots; i++ {
		s := b[208+48*i : 208+48*(i+1)]
		switch st := binary.BigEndian.Uint32(s); st {
		case slotActive:
			h.Keyslots = append(h.Keyslots, Keyslot{Index: i, KeyBits: h.KeyBits, KDF: "pbkdf2", Iterations: int64(binary.BigEndian.Uint32(s[4:]))})
		case slotInactive:
		default:
			return nil, corrupt("LUKS1 keyslot "+strconv.Itoa(i), int64(208+48*i), "state %#x", st)
		}
	}
	return h, nil
}

// luks2Bin is one LUKS2 binary header, with its JSON when valid.
type luks2Bin struct {
	off     int64
	size    uint64
	seqid   uint64
	label   string
	csumAlg string
	uuid    string
	json    []byte
}

func readLUKS2(dev io.ReaderAt, size int64) (*Header, error) {
	primary, err := readLUKS2Bin(dev, size, 0, luksMagic)
	if err != nil {
		return nil, err
	}
	best := primary
	var probs []string
	// The secondary header sits right after the primary one.
	if sec, err := readLUKS2Bin(dev, size, int64(primary.size), luks2SecondMagic); err != nil {
		probs = append(probs, fmt.Sprintf("secondary header: %v", err))
	} else if sec.seqid > best.seqid {
		best = sec
	}
	h, err := parseLUKS2JSON(best)
	if err != nil {
		return nil, err
	}
	h.Problems = probs
	return h, nil
}

func readLUKS2Bin(dev io.ReaderAt, size, off int64, magic []byte) (*luks2Bin, error) {
	b := make([]byte, luks2BinSize)
	if _, err := dev.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("luks: LUKS2 header at offset %d: %w", off, errOr(err))
	}
	if !bytes.Equal(b[:6], magic) || binary.BigEndian.Uint16(b[6:]) != 2 {
		return nil, corrupt("LUKS2 header", off, "no LUKS2 magic")
	}
	h := &luks2Bin{off: off, size: binary.BigEndian.Uint64(b[8:]), seqid: binary.BigEndian.Uint64(b[16:])}
	valid := false
	for s := uint64(16 << 10); s <= maxLUKS2Header; s *= 2 {
		valid = valid || h.size == s
	}
	if !valid || int64(h.size)+off > size {
		return nil, corrupt("LUKS2 header", off+8, "header size %d (want a power of two from 16 KiB to 4 MiB inside the %d-byte device)", h.size, size)
	}
	if hoff := binary.BigEndian.Uint64(b[256:]); hoff != uint64(off) {
		return nil, corrupt("LUKS2 header", off+256, "says it is at offset %d", hoff)
	}
	var ok [3]bool
	h.label, ok[0] = cstr(b[24:72])
	h.csumAlg, ok[1] = cstr(b[72:104])
	h.uuid, ok[2] = cstr(b[168:208])
	if !ok[0] || !ok[1] || !ok[2] {
		return nil, corrupt("LUKS2 header", off, "label, checksum algorithm or UUID is not printable text")
	}
	var hf hash.Hash
	switch h.csumAlg {
	case "sha256":
		hf = sha256.New()
	case "sha1":
		hf = sha1.New()
	case "sha512":
		hf = sha512.New()
	default:
		return nil, fmt.Errorf("luks: LUKS2 header at offset %d: checksum algorithm %q: %w", off, h.csumAlg, ErrUnsupported)
	}
	want := append([]byte(nil), b[448:448+hf.Size()]...)
	clear(b[448 : 448+64])
	hf.Write(b)
	js := make([]byte, h.size-luks2BinSize)
	if _, err := dev.ReadAt(js, off+luks2BinSize); err != nil {
		return nil, fmt.Errorf("luks: LUKS2 JSON area at offset %d: %w", off+luks2BinSize, errOr(err))
	}
	hf.Write(js)
	if got := hf.Sum(nil); !bytes.Equal(got, want) {
		return nil, corrupt("LUKS2 header", off+448, "%s checksum %s, computed %s", h.csumAlg, hex.EncodeToString(want), hex.EncodeToString(got))
	}
	if i := bytes.IndexByte(js, 0); i >= 0 {
		js = js[:i]
	}
	h.json = js
	return h, nil
}

// numStr is a LUKS2 JSON number written as a string ("16777216").
type numStr string

func (n numStr) int64() (int64, bool) {
	v, err := strconv.ParseInt(string(n), 10, 64)
	return v, err == nil && v >= 0
}

type luks2JSON struct {
	Keyslots map[string]struct {
		Type    string `json:"type"`
		KeySize int    `json:"key_size"`
		KDF     struct {
			Type       string `json:"type"`
			Iterations int64  `json:"iterations"`
			Time       int64  `json:"time"`
		} `json:"kdf"`
	} `json:"keyslots"`
	Segments map[string]struct {
		Type       string `json:"type"`
		Offset     numStr `json:"offset"`
		Encryption string `json:"encryption"`
	} `json:"segments"`
	Digests map[string]struct {
		Hash string `json:"hash"`
	} `json:"digests"`
}

func parseLUKS2JSON(b *luks2Bin) (*Header, error) {
	var j luks2JSON
	if err := json.Unmarshal(b.json, &j); err != nil {
		return nil, corrupt("LUKS2 JSON area", b.off+luks2BinSize, "%v", err)
	}
	if len(j.Keyslots) > maxKeyslots || len(j.Segments) > maxSegments {
		return nil, corrupt("LUKS2 JSON area", b.off+luks2BinSize, "%d keyslots and %d segments (cap %d and %d)", len(j.Keyslots), len(j.Segments), maxKeyslots, maxSegments)
	}
	h := &Header{Kind: "LUKS2", Version: 2, UUID: b.uuid, Label: b.label, Seqid: b.seqid, HeaderSize: int64(b.size)}
	for k, ks := range j.Keyslots {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 || i >= maxKeyslots {
			return nil, corrupt("LUKS2 JSON area", b.off+luks2BinSize, "keyslot %q", k)
		}
		it := ks.KDF.Iterations
		if ks.KDF.Type != "pbkdf2" {
			it = ks.KDF.Time
		}
		h.Keyslots = append(h.Keyslots, Keyslot{Index: i, Type: ks.Type, KeyBits: ks.KeySize * 8, KDF: ks.KDF.Type, Iterations: it})
	}
	sort.Slice(h.Keyslots, func(a, c int) bool { return h.Keyslots[a].Index < h.Keyslots[c].Index })
	// The first crypt segment gives the cipher and the payload offset.
	keys := make([]int, 0, len(j.Segments))
	for k := range j.Segments {
		i, err := strconv.Atoi(k)
		if err != nil || i < 0 {
			return nil, corrupt("LUKS2 JSON area", b.off+luks2BinSize, "segment %q", k)
		}
		keys = append(keys, i)
	}
	sort.Ints(keys)
	for _, i := range keys {
		s := j.Segments[strconv.Itoa(i)]
		if s.Type != "crypt" {
			continue
		}
		h.Cipher, h.Mode, _ = strings.Cut(s.Encryption, "-")
		off, ok := s.Offset.int64()
		if !ok {
			return nil, corrupt("LUKS2 JSON area", b.off+luks2BinSize, "segment %d offset %q", i, s.Offset)
		}
		h.PayloadOffset = off
		break
	}
	if len(h.Keyslots) > 0 {
		h.KeyBits = h.Keyslots[0].KeyBits
	}
	dk := make([]string, 0, len(j.Digests))
	for k := range j.Digests {
		dk = append(dk, k)
	}
	sort.Strings(dk)
	if len(dk) > 0 {
		h.Hash = j.Digests[dk[0]].Hash
	}
	return h, nil
}

// readBitLocker reads what a BitLocker volume boot sector says: the
// signature and, from Windows 7 on, the FVE metadata block offsets.
func readBitLocker(b []byte) (*Header, error) {
	if b[510] != 0x55 || b[511] != 0xAA {
		return nil, corrupt("BitLocker boot sector", 510, "no boot signature")
	}
	h := &Header{Kind: "BitLocker"}
	// Windows 7+: the volume GUID at 160 is
	// 4967D63B-2E29-4AD8-8399-F6A339E3D001; Vista has none.
	guid := b[160:176]
	if bytes.Equal(guid, []byte{0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01}) {
		h.Version = 2
	} else {
		h.Version = 1
	}
	return h, nil
}
