package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/escape"
	"github.com/vmscope/vmscope/qcow"
)

// openDisk opens an image file read-only, with its backing chain, and reads
// its partitions and filesystems. The caller closes the image.
func openDisk(path string) (*qcow.Image, *fsparse.Disk, error) {
	im, err := qcow.Open(path)
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
func printable(s string) string { return escape.Octal(s) }

// writeJSON writes v as indented JSON with a final newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
