// Command blkdiff compares two raw disk images block by block and prints the
// qemu-io commands that write B's differing blocks into an overlay of A, with
// each run of differing blocks saved as a pattern file for `write -s`. The
// fixture script uses it to make overlays whose clusters hold exactly the
// guest writes, as a running VM's would.
//
//	go run ./testdata/blkdiff A.img B.img CHUNKDIR > cmds
package main

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
)

const blk = 4096

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: blkdiff A B CHUNKDIR")
	}
	a, err := os.Open(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	b, err := os.Open(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	dir := os.Args[3]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	bufA, bufB := make([]byte, blk), make([]byte, blk)
	var run []byte
	runStart := int64(-1)
	n := 0
	flush := func() {
		if runStart < 0 {
			return
		}
		name := filepath.Join(dir, fmt.Sprintf("chunk%05d", n))
		n++
		if err := os.WriteFile(name, run, 0o644); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("write -s %s %d %d\n", name, runStart, len(run))
		run, runStart = nil, -1
	}
	for off := int64(0); ; off += blk {
		nb, errB := io.ReadFull(b, bufB)
		if nb == 0 {
			break
		}
		na, _ := io.ReadFull(a, bufA)
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			if runStart < 0 {
				runStart = off
			}
			run = append(run, bufB[:nb]...)
		} else {
			flush()
		}
		if errB != nil {
			break
		}
	}
	flush()
}
