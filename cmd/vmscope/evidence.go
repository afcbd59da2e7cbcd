package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/vmi/qemu"
)

// errEvidence is the error of a command asked to write over a file it
// reads as evidence.
var errEvidence = errors.New("refusing to write over evidence")

// refuseEvidence returns an error when the file at out (followed through
// symlinks) is one of the evidence files: the same device and inode, as
// os.SameFile compares them. A path that does not exist yet is no file of
// the evidence.
func refuseEvidence(out string, evidence []string) error {
	fo, err := os.Stat(out)
	if err != nil {
		return nil
	}
	for _, p := range evidence {
		if fi, err := os.Stat(p); err == nil && os.SameFile(fo, fi) {
			return fmt.Errorf("%s is %s, a file of the image being read: %w", out, p, errEvidence)
		}
	}
	return nil
}

// chainFiles lists the files of im: the top file and every backing file.
func chainFiles(im *disk.Image) []string {
	var out []string
	for _, l := range im.Layers() {
		out = append(out, l.Name())
	}
	return out
}

// guestFiles lists the files QEMU has open as block nodes (each disk, each
// layer of its backing chain), asked through the guest's monitor.
func guestFiles(ctx context.Context, q qemu.Monitor) ([]string, error) {
	r, err := q.Execute(ctx, "query-named-block-nodes", nil)
	if err != nil {
		return nil, fmt.Errorf("listing the guest's disk files: %w", err)
	}
	type image struct {
		Filename string          `json:"filename"`
		Backing  json.RawMessage `json:"backing-image"`
	}
	var nodes []struct {
		File  string `json:"file"`
		Image image  `json:"image"`
	}
	if err := json.Unmarshal(r, &nodes); err != nil {
		return nil, fmt.Errorf("query-named-block-nodes: %w", err)
	}
	var out []string
	for _, n := range nodes {
		out = append(out, n.File)
		im := n.Image
		// A backing chain is at most as deep as the reply is long.
		for depth := 0; depth < len(r); depth++ {
			out = append(out, im.Filename)
			if len(im.Backing) == 0 {
				break
			}
			var next image
			if json.Unmarshal(im.Backing, &next) != nil {
				break
			}
			im = next
		}
	}
	return out, nil
}
