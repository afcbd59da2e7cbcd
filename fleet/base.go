package fleet

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/scan"
	"github.com/vmscope/vmscope/scan/imagescan"
)

// LayerID names a layer by its content, not its path: a digest of its
// format, size and allocation map, of the first MiB of the disk it presents
// (partition tables) and of the first 64 KiB of each volume (superblocks,
// group descriptors, whose counters and times change with any write). Two
// copies of one base file have one id; a base written since has another.
func LayerID(ctx context.Context, l disk.Layer, d *fsparse.Disk) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "vmscope-layer-1 %s %d\n", l.Format(), l.Size())
	alloc, err := l.Allocated(ctx)
	if err != nil {
		return "", fmt.Errorf("layer %s: allocation: %w", l.Name(), err)
	}
	var b [16]byte
	for _, r := range alloc.Ranges() {
		binary.LittleEndian.PutUint64(b[:8], uint64(r.Start))
		binary.LittleEndian.PutUint64(b[8:], uint64(r.End))
		h.Write(b[:])
	}
	put := func(r io.ReaderAt, off, n int64, what string) error {
		buf := make([]byte, n)
		k, err := r.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("layer %s: %s: %w", l.Name(), what, err)
		}
		h.Write(buf[:k])
		return nil
	}
	if err := put(l, 0, min(1<<20, l.Size()), "first MiB"); err != nil {
		return "", err
	}
	for _, v := range d.Volumes {
		fmt.Fprintf(h, "%s %s %s\n", v.ID, v.Type, v.UUID)
		if err := put(v.Device, 0, min(64<<10, v.Device.Size()), "volume "+v.ID); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// baseResult is a base layer's whole scan, kept in
// DIR/layers/<layer>-<rules>.json for its overlays.
type baseResult struct {
	Layer    string         `json:"layer"`
	Rules    string         `json:"rules_digest"`
	Findings []scan.Finding `json:"findings"`
	// Errors, Skipped and ModulePrefix count what would make the
	// verdicts of some files unknown: an overlay then scans whole.
	Errors       int `json:"errors"`
	Skipped      int `json:"skipped"`
	ModulePrefix int `json:"module_prefix"`
	// Files holds the content digest of every regular file of the base
	// read by its scan, per volume and inode, with its block map: an
	// overlay's file its own layer did not write, with the same block map,
	// has these bytes, and its state commit need not read it again.
	Files map[string]map[uint32]baseFile `json:"files,omitempty"`
}

// baseFile is a base file's block map (FNV-64, dirty.FileRec.Extents),
// size and content digest.
type baseFile struct {
	Extents uint64 `json:"e"`
	Size    uint64 `json:"n"`
	SHA256  string `json:"s"`
}

// fullSource is the dirty source of a base's whole scan: every file is
// due (no state), and no range is read to find them.
type fullSource struct{}

func (fullSource) String() string { return "full" }

func (fullSource) Since(context.Context, *dirty.Cursor, *dirty.Cursor) (rangeset.Set, bool, error) {
	return rangeset.Set{}, true, nil
}

// memStore keeps the one snapshot a base's whole scan commits.
type memStore struct{ snap *dirty.Snapshot }

func (m *memStore) Load(string) (*dirty.Snapshot, error) { return nil, nil }
func (m *memStore) Save(s *dirty.Snapshot) error         { m.snap = s; return nil }

// sharedBase is what the overlays of one base reuse, kept for the life of
// a Scan: the base's whole scan and the index of each of its volumes, in
// which every regular file carries the base's digest and verdict.
type sharedBase struct {
	br      *baseResult
	indexes map[string]*dirty.Index
}

// baseIndexes indexes each volume of the base bd whose whole scan is br
// and gives every regular file the digest br read (when its block map and
// size are the ones br read) and its verdict: match when br has a finding
// on one of its paths, else clean (br read every file: no errors). A
// volume that needs a journal replay gets no index (its overlays index it
// whole).
func baseIndexes(ctx context.Context, bd *fsparse.Disk, br *baseResult) (map[string]*dirty.Index, error) {
	matched := map[string]bool{}
	for _, f := range br.Findings {
		matched[f.Partition+":"+f.Path] = true
	}
	out := map[string]*dirty.Index{}
	for _, v := range bd.Volumes {
		if rv, _, err := dirty.Recovered(ctx, v); err != nil || rv != v {
			continue
		}
		if _, err := dirty.OpenFS(v); err != nil {
			continue
		}
		x, err := dirty.BuildIndex(ctx, v)
		if err != nil {
			return nil, err
		}
		part, files := imagescan.PartitionName(v), br.Files[v.ID]
		x.Each(func(ino uint32, r *dirty.FileRec) {
			if !r.IsRegular() {
				return
			}
			if bf, ok := files[ino]; ok && r.ReadErr == "" && r.Extents == bf.Extents && r.Size == bf.Size {
				r.SHA256 = bf.SHA256
			}
			r.Verdict = "clean"
			if len(matched) > 0 {
				for _, p := range x.Paths(ino) {
					if matched[part+":"+p] {
						r.Verdict = "match"
					}
				}
			}
		})
		out[v.ID] = x
	}
	return out, nil
}

// baseWait bounds how long an overlay waits for another poller scanning
// the same base; past it, the overlay is scanned whole.
const baseWait = 30 * time.Minute

// overBase polls an overlay's first poll over its base (the last layer of
// its chain): the base is scanned whole once per rules digest (by
// whichever poller comes first; the others wait for its result) and
// indexed once per process; the overlay is polled against the base's
// index with what its layers hold (dirty.SelectOver), so only the files it
// changed are read and scanned, and the others keep the base's digests and
// verdicts. It returns the selection (to commit into st), the overlay's
// result (its scan plus the base's findings on files it did not change)
// and the base's LayerID; a nil selection when the verdicts cannot be
// reused (the caller polls and scans whole).
func (o *Options) overBase(ctx context.Context, im *disk.Image, d *fsparse.Disk, st dirty.Store) (*dirty.Selection, *scan.Result, string, error) {
	ls := im.Layers()
	bim, bd, err := openImage(ls[len(ls)-1].Name())
	if err != nil {
		return nil, nil, "", nil // scanned whole; its own errors tell
	}
	defer bim.Close()
	id, err := LayerID(ctx, bim.Layers()[0], bd)
	if err != nil {
		return nil, nil, "", nil
	}
	sb := o.bases[id]
	if sb == nil {
		br, err := o.baseScan(ctx, bim, bd, id)
		if err != nil || br == nil || br.Errors+br.Skipped+br.ModulePrefix > 0 {
			return nil, nil, id, err
		}
		xs, err := baseIndexes(ctx, bd, br)
		if err != nil {
			return nil, nil, id, nil
		}
		sb = &sharedBase{br, xs}
		if o.bases == nil {
			o.bases = map[string]*sharedBase{}
		}
		o.bases[id] = sb
	}
	sel, err := dirty.SelectOver(ctx, im, d, dirty.Auto(im), st, o.Rules.Digest(), bim, bd, sb.indexes)
	if err != nil || len(sel.Errors) > 0 {
		if sel != nil {
			sel.Close()
		}
		return nil, nil, id, nil
	}
	res, ok, err := o.overResult(ctx, d, sel, sb.br)
	if err != nil || !ok {
		sel.Close()
		return nil, nil, id, err
	}
	return sel, res, id, nil
}

// overResult scans the files the overlay's selection sel made due and adds
// the base's findings on the files it did not change; ok is false when
// the base's verdicts cannot be reused after all.
func (o *Options) overResult(ctx context.Context, d *fsparse.Disk, sel *dirty.Selection, br *baseResult) (*scan.Result, bool, error) {
	part := partNames(d)
	changed := map[string]bool{}
	gone := map[string]bool{} // deleted files: their findings go
	for _, c := range sel.Changes {
		for _, p := range append(append([]string{c.Path}, c.Paths...), c.OldPaths...) {
			changed[part[c.Volume]+":"+p] = true
			if c.Change == dirty.Deleted {
				gone[part[c.Volume]+":"+p] = true
			}
		}
	}
	if changed[":/etc/passwd"] {
		return nil, false, nil // file owners (the owner external) may differ
	}
	due := map[string]bool{}
	for _, c := range sel.Due() {
		due[part[c.Volume]+":"+c.Path] = true
	}
	for _, f := range br.Findings {
		k := f.Partition + ":" + f.Path
		if changed[k] && !due[k] && !gone[k] {
			return nil, false, nil // renamed or metadata only: not rescanned, finding would be stale
		}
	}
	res, err := imagescan.Scan(ctx, d, o.Rules, sel, o.Scan...)
	if err != nil {
		return nil, false, err
	}
	if len(res.Errors) > 0 || len(res.Skipped) > 0 || len(res.ModulePrefix) > 0 {
		return nil, false, nil
	}
	for _, f := range br.Findings {
		if !changed[f.Partition+":"+f.Path] {
			res.Findings = append(res.Findings, f)
		}
	}
	scan.SortFindings(res.Findings)
	res.Summary.Findings = len(res.Findings)
	matched := map[string]bool{}
	for _, f := range res.Findings {
		matched[f.Partition+":"+f.Path] = true
	}
	res.Summary.Matched = len(matched)
	return res, true, nil
}

// baseScan returns the base's whole scan with the rules, from
// DIR/layers/ or by scanning it under the layer's lock.
func (o *Options) baseScan(ctx context.Context, bim *disk.Image, bd *fsparse.Disk, id string) (*baseResult, error) {
	dir := filepath.Join(o.StateDir, "layers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	key := id + "-" + o.Rules.Digest()[:min(16, len(o.Rules.Digest()))]
	path := filepath.Join(dir, key+".json")
	if br, err := readBase(path); err == nil {
		return br, nil
	}
	lock, err := AcquireLock(ctx, filepath.Join(dir, key+".lock"), baseWait, Holder{o.Host, o.PID, o.RunID, time.Now().UTC()})
	var le *LockedError
	if errors.As(err, &le) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	if br, err := readBase(path); err == nil {
		return br, nil
	}
	// The whole scan goes through a stateless full selection so that the
	// digests of the files it reads are kept for the overlays' commits.
	ms := &memStore{}
	sel, err := dirty.Select(ctx, bim, bd, fullSource{}, ms, o.Rules.Digest())
	if err != nil {
		return nil, err
	}
	defer sel.Close()
	res, err := imagescan.Scan(ctx, bd, o.Rules, sel, o.Scan...)
	if err != nil {
		return nil, err
	}
	br := &baseResult{Layer: id, Rules: o.Rules.Digest(), Findings: res.Findings, Errors: len(res.Errors), Skipped: len(res.Skipped) + len(sel.Errors), ModulePrefix: len(res.ModulePrefix)}
	if len(res.Errors) == 0 && len(sel.Errors) == 0 {
		if err := imagescan.Commit(ctx, bd, sel, res); err != nil {
			return nil, err
		}
		br.Files = map[string]map[uint32]baseFile{}
		for vol, x := range ms.snap.Indexes {
			m := map[uint32]baseFile{}
			x.Each(func(ino uint32, r *dirty.FileRec) {
				if r.IsRegular() && r.ReadErr == "" && r.SHA256 != "" {
					m[ino] = baseFile{r.Extents, r.Size, r.SHA256}
				}
			})
			br.Files[vol] = m
		}
	}
	b, err := json.Marshal(br)
	if err != nil {
		return nil, err
	}
	if err := writeFile(path, key, [][]byte{append(b, '\n')}); err != nil {
		return nil, err
	}
	return br, nil
}

func readBase(path string) (*baseResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var br baseResult
	dec := json.NewDecoder(bufio.NewReader(io.LimitReader(f, 1<<30)))
	if err := dec.Decode(&br); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &br, nil
}
