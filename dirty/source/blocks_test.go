package source

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	"github.com/vmscope/vmscope/internal/rangeset"
)

// refineDisks returns a 16 MiB disk of random bytes and a copy with one
// byte changed in every 64th block (the written blocks), and those blocks.
func refineDisks() (old, cur []byte, written rangeset.Set) {
	rng := rand.New(rand.NewPCG(1, 2))
	old = make([]byte, 16<<20)
	for i := range old {
		old[i] = byte(rng.Uint32())
	}
	cur = bytes.Clone(old)
	for b := int64(0); b < int64(len(cur))/HashBlock; b += 64 {
		cur[b*HashBlock+100] ^= 0xFF
		written.Add(b*HashBlock, (b+1)*HashBlock)
	}
	return old, cur, written
}

// whole is every byte of disk.
func whole(disk []byte) rangeset.Set {
	return rangeset.Of(rangeset.Range{Start: 0, End: int64(len(disk))})
}

// TestRefine: against the older bytes, then against the hashes the first
// refine kept, only the written blocks are changed; a block that goes back
// to its older bytes is changed once more, then no longer hashed.
func TestRefine(t *testing.T) {
	ctx := context.Background()
	old, cur, written := refineDisks()
	oldR := bytes.NewReader(old)
	all := whole(cur)
	size := int64(len(cur))
	h1 := NewBlockHashes(nil)
	got, err := Refine(ctx, bytes.NewReader(cur), size, all, Refs{Next: h1, Old: oldR, NextOld: oldR})
	if err != nil {
		t.Fatal(err)
	}
	if !rangeset.Equal(got, written) {
		t.Fatalf("against the older layer: %v, want %v", got.Ranges()[:3], written.Ranges()[:3])
	}
	// Nothing written since: nothing changed.
	h2 := NewBlockHashes(nil)
	if got, _ = Refine(ctx, bytes.NewReader(cur), size, all, Refs{Prev: h1, Next: h2, Old: oldR, NextOld: oldR}); got.Bytes() != 0 {
		t.Fatalf("second refine: %d bytes changed", got.Bytes())
	}
	// Block 0 back to the old bytes, block 1 written.
	copy(cur, old[:HashBlock])
	cur[HashBlock+5] ^= 1
	h3 := NewBlockHashes(nil)
	got, _ = Refine(ctx, bytes.NewReader(cur), size, all, Refs{Prev: h2, Next: h3, Old: oldR, NextOld: oldR})
	var want rangeset.Set
	want.Add(0, 2*HashBlock)
	if !rangeset.Equal(got, want) {
		t.Fatalf("third refine: %v, want %v", got.Ranges(), want.Ranges())
	}
	if h3.get(0) != 0 || h3.get(1) == 0 || h3.get(64) == 0 {
		t.Errorf("kept hashes: block 0 %x (want none: as the older layer), 1 %x, 64 %x", h3.get(0), h3.get(1), h3.get(64))
	}
	// Without an older layer (a bitmap): a map updated in place.
	hd, err := HashDisk(ctx, bytes.NewReader(cur), size)
	if err != nil {
		t.Fatal(err)
	}
	cur[70*HashBlock] ^= 1
	got, _ = Refine(ctx, bytes.NewReader(cur), size, all, Refs{Prev: hd, Next: hd})
	want = rangeset.Set{}
	want.Add(70*HashBlock, 71*HashBlock)
	if !rangeset.Equal(got, want) {
		t.Fatalf("bitmap refine: %v, want %v", got.Ranges(), want.Ranges())
	}

	// Unwritten space: a group of zero blocks is held as one hash, and
	// becomes a whole group again when one of its blocks changes.
	zeros := make([]byte, 2<<20)
	zsize := int64(len(zeros))
	hz, err := HashDisk(ctx, bytes.NewReader(zeros), zsize)
	if err != nil {
		t.Fatal(err)
	}
	if len(hz.groups[0]) != 1 || hz.get(5) != zeroHash {
		t.Fatalf("a zero group: %d hashes, block 5 %x", len(hz.groups[0]), hz.get(5))
	}
	zeros[5*HashBlock] = 1
	zall := whole(zeros)
	got, _ = Refine(ctx, bytes.NewReader(zeros), zsize, zall, Refs{Prev: hz, Next: hz})
	want = rangeset.Set{}
	want.Add(5*HashBlock, 6*HashBlock)
	if !rangeset.Equal(got, want) || len(hz.groups[0]) != HashGroup || hz.get(5) == zeroHash || hz.get(6) != zeroHash {
		t.Errorf("a zero group after a write: %v, %d hashes", got.Ranges(), len(hz.groups[0]))
	}
	if g, _ := hz.Changed(); len(g[0]) != HashGroup || len(g[1]) != 1 {
		t.Errorf("groups to store: %d and %d hashes", len(g[0]), len(g[1]))
	}
}

// BenchmarkRefine: narrowing 16 MiB of overlay clusters against the older
// layer (the cow source's first poll after a change).
func BenchmarkRefine(b *testing.B) {
	ctx := context.Background()
	old, cur, _ := refineDisks()
	oldR := bytes.NewReader(old)
	all := whole(cur)
	b.SetBytes(int64(len(cur)))
	for b.Loop() {
		if _, err := Refine(ctx, bytes.NewReader(cur), int64(len(cur)), all, Refs{Next: NewBlockHashes(nil), Old: oldR, NextOld: oldR}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRefineHashes: the same against stored hashes (the bitmap
// source, or a cow block written at an earlier poll).
func BenchmarkRefineHashes(b *testing.B) {
	ctx := context.Background()
	_, cur, _ := refineDisks()
	prev, err := HashDisk(ctx, bytes.NewReader(cur), int64(len(cur)))
	if err != nil {
		b.Fatal(err)
	}
	all := whole(cur)
	b.SetBytes(int64(len(cur)))
	for b.Loop() {
		if _, err := Refine(ctx, bytes.NewReader(cur), int64(len(cur)), all, Refs{Prev: prev, Next: prev}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRefineBound: a map of more distinct hashes than the bound is an
// error, not an unbounded allocation; unwritten space does not count.
func TestRefineBound(t *testing.T) {
	defer func(n int) { maxHashGroups = n }(maxHashGroups)
	maxHashGroups = 2
	_, disk, _ := refineDisks() // 16 MiB of random bytes: 16 groups
	if _, err := HashDisk(context.Background(), bytes.NewReader(disk), int64(len(disk))); err == nil {
		t.Error("16 groups of distinct hashes under a bound of 2: no error")
	}
	zeros := make([]byte, 64<<20)
	if _, err := HashDisk(context.Background(), bytes.NewReader(zeros), int64(len(zeros))); err != nil {
		t.Errorf("64 MiB of zeros: %v", err)
	}
}
