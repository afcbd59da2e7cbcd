package scan

import (
	"bytes"
	"path"
	"strings"
)

// fileType names a file's type from its first bytes (see [Externals]).
func fileType(head []byte) string {
	switch {
	case len(head) == 0:
		return ""
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return "ELF"
	case bytes.HasPrefix(head, []byte("MZ")):
		return "PE"
	case bytes.HasPrefix(head, []byte("#!")):
		return "SCRIPT"
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return "ZIP"
	case bytes.HasPrefix(head, []byte("\x1f\x8b")):
		return "GZIP"
	}
	return textOrEmpty(head)
}

// textOrEmpty says "TEXT" when head has no NUL and at most 5% of bytes
// that are neither printable ASCII, whitespace, nor part of UTF-8.
func textOrEmpty(head []byte) string {
	bad := 0
	for _, c := range head {
		switch {
		case c == 0:
			return ""
		case c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
		case c < 0x20 || c == 0x7f:
			bad++
		}
	}
	if bad*20 > len(head) {
		return ""
	}
	return "TEXT"
}

// extension is the lower-case extension of a guest path with its dot,
// "" when the base name has none (".bashrc" has none, as in Loki).
func extension(p string) string {
	b := path.Base(p)
	i := strings.LastIndexByte(b, '.')
	if i <= 0 {
		return ""
	}
	return strings.ToLower(b[i:])
}
