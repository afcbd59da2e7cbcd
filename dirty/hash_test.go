package dirty

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

// randomDisk returns 16 MiB of random bytes.
func randomDisk() []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	d := make([]byte, 16<<20)
	for i := range d {
		d[i] = byte(rng.Uint32())
	}
	return d
}

// TestChunkHashes: every chunk's hash is the first 8 bytes of its sha256,
// zero chunks and the short last chunk included.
func TestChunkHashes(t *testing.T) {
	disk := randomDisk()
	clear(disk[3<<20 : 5<<20]) // zero chunks
	disk = disk[:len(disk)-1000]
	got, err := ChunkHashes(context.Background(), bytes.NewReader(disk), int64(len(disk)), DefaultChunk)
	if err != nil {
		t.Fatal(err)
	}
	if want := (len(disk) + DefaultChunk - 1) / DefaultChunk; len(got) != want {
		t.Fatalf("%d hashes, want %d", len(got), want)
	}
	for i := range got {
		s := sha256.Sum256(disk[i*DefaultChunk : min((i+1)*DefaultChunk, len(disk))])
		if want := binary.LittleEndian.Uint64(s[:8]); got[i] != want {
			t.Fatalf("chunk %d: %x, want %x", i, got[i], want)
		}
	}
}

// TestChunkHashesData: skipping the runs the image says read as zeros
// (a sparse raw file's holes) gives the hashes of reading them.
func TestChunkHashesData(t *testing.T) {
	ctx := context.Background()
	im, err := qcow.Open(fixture.Path(t, "ext4.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	data, err := im.DataRanges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if data.Bytes() >= im.Size()/2 {
		t.Fatalf("ext4.img: %d of %d bytes of data: not sparse enough to test", data.Bytes(), im.Size())
	}
	want, err := ChunkHashes(ctx, im, im.Size(), DefaultChunk)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ChunkHashesData(ctx, im, im.Size(), DefaultChunk, data)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Error("the hashes differ when the holes are skipped")
	}
}
