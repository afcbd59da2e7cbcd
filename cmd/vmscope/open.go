package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	_ "github.com/vmscope/vmscope/qcow" // qcow2 joins disk's format registry
)

// openDisk opens an image file read-only, with its backing chain, and reads
// its partitions and filesystems. The caller closes the image.
func openDisk(path string) (*disk.Image, *fsparse.Disk, error) {
	im, err := disk.Open(path)
	if err != nil {
		return nil, nil, err
	}
	d, err := fsparse.Open(im, im.Size())
	if err != nil {
		im.Close()
		return nil, nil, err
	}
	return im, d, nil
}

// checkFormat validates a --format value against the allowed ones.
func checkFormat(f string, allowed ...string) error {
	for _, a := range allowed {
		if f == a {
			return nil
		}
	}
	return usageError{fmt.Errorf("--format %q: want one of %s", f, strings.Join(allowed, ", "))}
}

// printable escapes a guest name for a terminal: bytes that are not valid
// UTF-8, and control characters, are shown as octal escapes like ls -b.
func printable(s string) string {
	if !strings.ContainsFunc(s, func(r rune) bool {
		return r == utf8.RuneError || r < 0x20 || r == 0x7f || r == '\\'
	}) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1, r < 0x20, r == 0x7f:
			for _, c := range []byte(s[i : i+n]) {
				b.WriteString("\\" + strconv.FormatInt(int64(c), 8))
			}
		case r == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// writeJSON writes v as indented JSON with a final newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
