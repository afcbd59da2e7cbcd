package dirty

import (
	"context"
	"fmt"

	"github.com/vmscope/vmscope/fsparse"
)

// hashAll records the content sha256 of every regular file of x (read from
// v). A poll with WithHashes decides whether a file whose dirty blocks did
// not change its block map really changed by this digest; without it the
// file would be reported changed whenever a dirty range touches one of its
// blocks (a qcow2 cluster or a hash chunk holds many small files). Files
// that cannot be read are returned as errors and keep no digest (they stay
// due whenever their blocks are dirty).
func hashAll(ctx context.Context, v *fsparse.Volume, x *Index) []error {
	var errs []error
	for ino, r := range x.Files {
		if ctx.Err() != nil {
			return append(errs, ctx.Err())
		}
		if !r.IsRegular() || r.ReadErr != "" {
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
