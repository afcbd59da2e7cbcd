package dirty

import (
	"context"
	"encoding/hex"
	"fmt"
	"hash"
	"sync"

	"github.com/vmscope/vmscope/fsparse"
)

// hashAll records the content sha256 of every regular file of x (read from
// v), taking the digests already known (ino → sha256) as they are. A poll
// with WithHashes decides whether a file whose dirty blocks did not change
// its block map really changed by this digest; without it the file would be
// reported changed whenever a dirty range touches one of its blocks (a
// qcow2 cluster or a hash chunk holds many small files). Files that cannot
// be read are returned as errors and keep no digest (they stay due whenever
// their blocks are dirty).
func hashAll(ctx context.Context, v *fsparse.Volume, x *Index, known map[uint32]string) []error {
	var errs []error
	for ino, r := range x.Files {
		if ctx.Err() != nil {
			return append(errs, ctx.Err())
		}
		if !r.IsRegular() || r.ReadErr != "" {
			continue
		}
		if sum, ok := known[ino]; ok {
			r.SHA256 = sum
			continue
		}
		sum, err := hashFile(ctx, v, ino)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: inode %d: %w", v.ID, ino, err))
			continue
		}
		r.SHA256 = sum
	}
	return errs
}

// hashingFile hashes the bytes read through it while the reads run from
// the start of the file without a gap (as the scanner's first pass does,
// blocks overlapping or not); sum says whether they covered the file.
// done, when set, gets the digest once the reads have covered the file
// (the caller can then forget the file: a poll keeps only the digest).
type hashingFile struct {
	fsparse.File
	mu   sync.Mutex
	h    hash.Hash
	to   int64
	done func(sum string)
}

func (f *hashingFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(p, off)
	var done func(string)
	var sum string
	f.mu.Lock()
	if end := off + int64(n); off <= f.to && end > f.to {
		f.h.Write(p[f.to-off : n])
		f.to = end
		if f.to == f.Size() && f.done != nil {
			done, sum, f.done = f.done, hex.EncodeToString(f.h.Sum(nil)), nil
		}
	}
	f.mu.Unlock()
	if done != nil {
		done(sum)
	}
	return n, err
}

func (f *hashingFile) sum() (string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.to != f.Size() {
		return "", false
	}
	return hex.EncodeToString(f.h.Sum(nil)), true
}
