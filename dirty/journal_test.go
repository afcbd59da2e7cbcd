package dirty

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/testdisk"
)

// TestPollCrashedGuest: a poll of an image whose journal needs recovery
// (the guest of testdata/guest-disk killed after its transactions were
// committed) must see what recovery would: the reference is the guest's
// own listing of the filesystem before its workload and after it (printed
// once the transactions were committed, just before the kill), which
// e2fsck's recovery of the crashed image must equal; the files handed to
// the scanner must read as the guest read them.
func TestPollCrashedGuest(t *testing.T) {
	src := filepath.Join(fixture.Root(), "testdata", "out-guest-disk")
	for _, n := range []string{"crash-before.img", "crash.img", "crash-fsck.img"} {
		if _, err := os.Stat(filepath.Join(src, n)); err != nil {
			fixture.Missing(t, "%s (bash testdata/guest-disk/build.sh)", filepath.Join(src, n))
		}
	}
	ctx := context.Background()
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img") // one path: the state is per image
	sh(t, dir, "cp", "--sparse=always", filepath.Join(src, "crash-before.img"), img)
	// The reference: the guest's own listings before its workload and
	// after it, once its transactions were committed (just before the kill).
	console := filepath.Join(src, "console-crash.log")
	before, after := guestListing(t, console, "before vda"), guestListing(t, console, "after vda")
	checkReaderAgrees(t, snapshotTree(t, img), before)
	var st memStore
	poll(t, img, "hash", &st)

	sh(t, dir, "cp", "--sparse=always", filepath.Join(src, "crash.img"), img)
	_, ref := openVol(t, filepath.Join(src, "crash-fsck.img"))
	checkReaderAgrees(t, walkAll(t, ref), after) // e2fsck's recovery equals the guest's view
	truth := truthDiff(before, after)

	im, d := testdisk.Open(t, img)
	defer im.Close()
	sel, err := Select(ctx, im, d, Hash(im), &st, "rules-1")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	for _, e := range sel.Errors {
		t.Error(e)
	}
	t.Logf("stats %+v", sel.Stats)
	if sel.Stats["disk"].ReplayedBytes == 0 {
		t.Error("no journal replay")
	}
	checkStrict(t, truth, after, sel.Changes)
	for _, c := range sel.Due() {
		_, f, err := sel.Open(c)
		if err != nil {
			t.Errorf("%s: %v", c.Path, err)
			continue
		}
		h := sha256.New()
		io.Copy(h, io.NewSectionReader(f, 0, f.Size()))
		if got := hex.EncodeToString(h.Sum(nil)); got != after[c.Path].sum {
			t.Errorf("%s: due file reads %s, the guest read %s", c.Path, got, after[c.Path].sum)
		}
	}
}

// TestPollFastCommitGuest: a poll of an image whose journal holds fast
// commits (not replayed) must say so with an error, which keeps the poll
// state where it was: it must not report a clean poll.
func TestPollFastCommitGuest(t *testing.T) {
	src := filepath.Join(fixture.Root(), "testdata", "out-guest-disk")
	for _, n := range []string{"fc-crash-before.img", "fc-crash.img"} {
		if _, err := os.Stat(filepath.Join(src, n)); err != nil {
			fixture.Missing(t, "%s (bash testdata/guest-disk/build.sh)", filepath.Join(src, n))
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	sh(t, dir, "cp", "--sparse=always", filepath.Join(src, "fc-crash-before.img"), img)
	var st memStore
	poll(t, img, "hash", &st)
	sh(t, dir, "cp", "--sparse=always", filepath.Join(src, "fc-crash.img"), img)
	im, d := testdisk.Open(t, img)
	defer im.Close()
	sel, err := Select(context.Background(), im, d, Hash(im), &st, "rules-1")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()
	found := false
	for _, e := range sel.Errors {
		t.Log(e)
		found = found || errors.Is(e, ErrFastCommits)
	}
	if !found {
		t.Error("no error for the journal's fast commits")
	}
}
