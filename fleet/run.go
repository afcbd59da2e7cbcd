package fleet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/dirty/state"
	"github.com/vmscope/vmscope/disk"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/qcow"
	"github.com/vmscope/vmscope/scan"
	"github.com/vmscope/vmscope/scan/imagescan"
	"github.com/vmscope/vmscope/vmerr"
)

// Image statuses, in the image line of a result.
const (
	StatusClean    = "clean"    // scanned, nothing found
	StatusFindings = "findings" // scanned, something matched
	StatusFailed   = "failed"   // not scanned (missing, corrupt, I/O error)
	StatusSkipped  = "skipped"  // another poller held its lock
)

// Line types of a result file.
const (
	TypeFinding     = "finding"
	TypeError       = "error"
	TypeSkippedFile = "skipped_file"
	TypeImage       = "image" // last line of every result file
)

// Head is what every result line carries.
type Head struct {
	Type    string `json:"type"`
	RunID   string `json:"run_id"`
	ImageID string `json:"image_id"`
	Shard   string `json:"shard"`
}

// ImageLine is the last line of an image's result: its status and what
// its poll cost.
type ImageLine struct {
	Head
	Path   string `json:"path"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// Retry: the failure is worth a retry (I/O, interrupted), not a
	// property of the image (missing, corrupt, unsupported).
	Retry bool `json:"retry,omitempty"`
	// DirtySource is how the files to scan were chosen: full (a first
	// poll or no state), cow, bitmap:NAME, hash; base-shared when an
	// overlay's first poll reused its base's verdicts.
	DirtySource string `json:"dirty_source,omitempty"`
	// BaseLayer is the LayerID of the base whose verdicts were reused.
	BaseLayer   string `json:"base_layer,omitempty"`
	Files       int64  `json:"files"`
	BytesRead   int64  `json:"bytes_read"`
	Findings    int    `json:"findings"`
	Errors      int    `json:"errors"`
	RulesDigest string `json:"rules_digest,omitempty"`
	Committed   bool   `json:"state_committed"`
}

type findingLine struct {
	Head
	scan.Finding
}

type errorLine struct {
	Head
	Partition string `json:"partition"`
	FS        string `json:"filesystem"`
	Path      string `json:"path"`
	Inode     uint64 `json:"inode"`
	Error     string `json:"error"`
}

type skippedLine struct {
	Head
	scan.Skipped
}

// Options of a fleet scan.
type Options struct {
	Shard    Shard
	Balance  Balance
	StateDir string // DIR/<id>.state, DIR/<id>.lock, DIR/layers/
	OutDir   string // OUT/<run-id>/<id>.ndjson
	RunID    string
	LockWait time.Duration
	Rules    *scan.Rules
	Scan     []scan.Option
	// Filtered: the scan options leave files out (include, exclude, max
	// size): a base's verdicts are then not reused.
	Filtered bool
	// NoState scans every image whole, without poll state or base
	// sharing (the baseline of bench/fleet.sh).
	NoState bool
	Host    string
	PID     int
	// Failpoint, when set, is called at named points (between-images,
	// before-commit, state-commit (concurrently with the state's save),
	// before-result): a test hook.
	Failpoint func(name, id string)
	// Done, when set, is told each image's outcome.
	Done func(Outcome)

	bases map[string]*sharedBase // by LayerID, for the life of a Scan
}

// Outcome is what became of one image of the shard.
type Outcome struct {
	ID      string
	Status  string // a Status*, or "complete" when a result was already there
	Retry   bool
	Err     error
	Scanned bool   // its files were scanned in this process
	Prior   string // complete: the status its result says
}

// Summary counts the outcomes of a shard; an image complete already
// counts as Complete and as the status of its result.
type Summary struct {
	Images, Complete, Clean, Findings, Failed, Skipped int
	Retry                                              bool // some image failed in a way worth a retry
}

// ErrRunID: a run id that cannot name a folder.
var ErrRunID = errors.New("fleet: bad run id")

func (o *Options) point(name, id string) {
	if o.Failpoint != nil {
		o.Failpoint(name, id)
	}
}

// Scan scans the images of inv that o.Shard takes, one after the other,
// and writes their results under o.OutDir/o.RunID. An image already
// complete in that run is not scanned again. It stops when ctx is
// cancelled, leaving no half-written result, and returns ctx's error.
func Scan(ctx context.Context, inv *Inventory, o Options) (*Summary, error) {
	if err := ValidID(o.RunID); err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrRunID, o.RunID, err)
	}
	if o.Rules == nil {
		return nil, errors.New("fleet: no rules")
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
	plan, err := Plan(inv, o.Shard, o.Balance, nil)
	if err != nil {
		return nil, err
	}
	runDir := filepath.Join(o.OutDir, o.RunID)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.StateDir, 0o755); err != nil {
		return nil, err
	}
	sum := &Summary{Images: len(plan)}
	for _, im := range plan {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		out, err := o.image(ctx, runDir, im)
		if err != nil {
			return sum, err
		}
		status := out.Status
		if status == "complete" {
			sum.Complete++
			status = out.Prior
		}
		switch status {
		case StatusClean:
			sum.Clean++
		case StatusFindings:
			sum.Findings++
		case StatusFailed:
			sum.Failed++
		case StatusSkipped:
			sum.Skipped++
		}
		sum.Retry = sum.Retry || out.Retry
		if o.Done != nil {
			o.Done(out)
		}
		o.point("between-images", im.ID)
	}
	return sum, nil
}

// resultPath is OUT/<run>/<id>.ndjson.
func resultPath(runDir, id string) string { return filepath.Join(runDir, id+".ndjson") }

// pendingPrefix names the result written before the state commit: the
// state's transaction id before it is in the name (none: no state yet).
func pendingPrefix(runDir, id string) string { return filepath.Join(runDir, "."+id+".pending-") }

// complete reports whether the image's result in runDir is final: an
// image line that is not skipped and not a failure worth a retry.
func complete(path string) bool {
	last, err := lastImageLine(path)
	return err == nil && last.Status != StatusSkipped && !last.Retry
}

// lastImageLine reads the image line that ends the result file at path.
func lastImageLine(path string) (*ImageLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const tail = 64 << 10
	off := max(fi.Size()-tail, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	var l ImageLine
	if err := json.Unmarshal(b, &l); err != nil || l.Type != TypeImage {
		return nil, fmt.Errorf("%s: no image line at its end", path)
	}
	return &l, nil
}

// image does one image: resume, lock, poll, scan, commit, result.
func (o *Options) image(ctx context.Context, runDir string, im Image) (Outcome, error) {
	final := resultPath(runDir, im.ID)
	if complete(final) {
		return completed(im.ID, final), nil
	}
	head := Head{RunID: o.RunID, ImageID: im.ID, Shard: o.Shard.String()}
	lock, err := AcquireLock(ctx, filepath.Join(o.StateDir, im.ID+".lock"), o.LockWait, Holder{o.Host, o.PID, o.RunID, time.Now().UTC()})
	var le *LockedError
	if errors.As(err, &le) {
		l := ImageLine{Head: head, Path: im.Path, Status: StatusSkipped, Error: err.Error()}
		if err := writeResult(runDir, im.ID, final, [][]byte{mustLine(&l, TypeImage)}, false); err != nil {
			return Outcome{}, err
		}
		return Outcome{ID: im.ID, Status: StatusSkipped, Err: err}, nil
	}
	if err != nil {
		return Outcome{}, err
	}
	defer lock.Release()
	// What a killed poller of this image left half-written.
	if ms, _ := filepath.Glob(filepath.Join(runDir, "."+im.ID+".tmp-*")); len(ms) > 0 {
		for _, m := range ms {
			os.Remove(m)
		}
	}
	if complete(final) { // finished by another poller while we waited
		return completed(im.ID, final), nil
	}
	statePath := filepath.Join(o.StateDir, im.ID+".state")
	if done, err := o.resumePending(runDir, im.ID, final, statePath); err != nil || done {
		if done {
			return completed(im.ID, final), nil
		}
		return Outcome{}, err
	}
	lines, il, err := o.poll(ctx, im, head, statePath, runDir, final)
	if ctx.Err() != nil {
		return Outcome{}, ctx.Err()
	}
	if err != nil {
		return Outcome{}, err
	}
	if lines != nil { // else written through the pending file
		if err := writeResult(runDir, im.ID, final, lines, true); err != nil {
			return Outcome{}, err
		}
	}
	return Outcome{ID: im.ID, Status: il.Status, Retry: il.Retry, Scanned: il.Status != StatusFailed, Err: errIf(il.Error)}, nil
}

// completed is the outcome of an image whose result was there already.
func completed(id, final string) Outcome {
	o := Outcome{ID: id, Status: "complete"}
	if l, err := lastImageLine(final); err == nil {
		o.Prior = l.Status
	}
	return o
}

func errIf(s string) error {
	if s == "" {
		return nil
	}
	return errors.New(s)
}

// resumePending finishes the result a killed poller left pending: when the
// state moved past the transaction named in its file name, the state was
// committed and the pending result is the image's (renamed into place:
// done); otherwise it is removed and the image is polled again.
func (o *Options) resumePending(runDir, id, final, statePath string) (bool, error) {
	ms, _ := filepath.Glob(pendingPrefix(runDir, id) + "*")
	done := false
	for _, m := range ms {
		before := strings.TrimPrefix(m, pendingPrefix(runDir, id))
		now, err := stateTx(statePath)
		if err != nil {
			return false, err
		}
		if !done && before != txName(now) {
			if err := os.Rename(m, final); err != nil {
				return false, err
			}
			done = true
			continue
		}
		os.Remove(m)
	}
	return done, nil
}

// stateTx is the bbolt transaction id of the state file at path, -1 when
// it is missing or empty (no database yet).
func stateTx(path string) (int64, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || err == nil && fi.Size() == 0 {
		return -1, nil
	}
	if err != nil {
		return 0, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return 0, fmt.Errorf("state %s: %w", path, err)
	}
	defer db.Close()
	var id int
	err = db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil })
	return int64(id), err
}

func txName(tx int64) string {
	if tx < 0 {
		return "none"
	}
	return strconv.FormatInt(tx, 10)
}

// CheckState checks the state file at path: bbolt's own consistency check
// (every page reachable once, no page freed twice) and a load of its
// snapshot. A missing state passes.
func CheckState(path string) error {
	if tx, err := stateTx(path); err != nil || tx < 0 {
		return err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			return fmt.Errorf("state %s: %w", path, e)
		}
		return nil
	})
	db.Close()
	return err
}

// failure is the image line of an image that could not be scanned; retry
// unless the error is a property of the image.
func failure(head Head, path string, err error) *ImageLine {
	permanent := errors.Is(err, fs.ErrNotExist) || errors.Is(err, vmerr.ErrCorrupt) || errors.Is(err, vmerr.ErrUnsupported) || errors.Is(err, vmerr.ErrNotPresent)
	var fe *vmerr.FormatError
	permanent = permanent || errors.As(err, &fe)
	return &ImageLine{Head: head, Path: path, Status: StatusFailed, Error: err.Error(), Retry: !permanent}
}

// openImage opens the image file and its volumes.
func openImage(path string) (*disk.Image, *fsparse.Disk, error) {
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

// txStore is the poll state with the state-commit failpoint around its
// save.
type txStore struct {
	*state.DB
	o  *Options
	id string
}

func (s txStore) Save(snap *dirty.Snapshot) error {
	s.o.point("state-commit", s.id)
	return s.DB.Save(snap)
}

// poll polls and scans one locked image. Its result lines are returned
// (nil when they were written already: the pending file, renamed after the
// commit).
func (o *Options) poll(ctx context.Context, im Image, head Head, statePath, runDir, final string) ([][]byte, *ImageLine, error) {
	fail := func(err error) ([][]byte, *ImageLine, error) {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		l := failure(head, im.Path, err)
		return [][]byte{mustLine(l, TypeImage)}, l, nil
	}
	img, d, err := openImage(im.Path)
	if err != nil {
		return fail(err)
	}
	defer img.Close()
	il := &ImageLine{Head: head, Path: im.Path, RulesDigest: o.Rules.Digest(), DirtySource: "full"}
	if o.NoState {
		res, err := imagescan.Scan(ctx, d, o.Rules, nil, o.Scan...)
		if err != nil {
			return fail(err)
		}
		return o.lines(head, il, res), il, nil
	}
	before, err := stateTx(statePath)
	if err != nil {
		return fail(err)
	}
	db, err := state.Open(statePath)
	if err != nil {
		return fail(err)
	}
	defer db.Close()
	st := txStore{db, o, im.ID}
	var sel *dirty.Selection
	var res *scan.Result
	if before < 0 && !o.Filtered && len(img.Layers()) > 1 {
		sel, res, il.BaseLayer, err = o.overBase(ctx, img, d, st)
		if err != nil {
			return fail(err)
		}
		if sel != nil {
			il.DirtySource = "base-shared"
		}
	}
	if sel == nil {
		if sel, err = dirty.Select(ctx, img, d, dirty.Auto(img), st, o.Rules.Digest()); err != nil {
			return fail(err)
		}
		if before >= 0 {
			il.DirtySource = sel.Source
		}
	}
	defer sel.Close()
	if res == nil {
		if res, err = imagescan.Scan(ctx, d, o.Rules, sel, o.Scan...); err != nil {
			return fail(err)
		}
	}
	lines := o.lines(head, il, res)
	if len(res.Errors) > 0 {
		return lines, il, nil // state left as it was: the next poll redoes this one
	}
	// The result goes beside its place before the commit, named by the
	// state's transaction before it: a poller killed after the commit
	// leaves it for the next one to put in place (resumePending).
	il.Committed = true
	lines[len(lines)-1] = mustLine(il, TypeImage)
	pending := pendingPrefix(runDir, im.ID) + txName(before)
	if err := writeFile(pending, im.ID, lines); err != nil {
		return nil, nil, err
	}
	o.point("before-commit", im.ID)
	// A base-shared poll: the due files are the ones the overlay changed;
	// the others have their base's digest and verdict in the index.
	if err = imagescan.Commit(ctx, d, sel, res); err != nil {
		os.Remove(pending)
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return fail(err)
	}
	o.point("before-result", im.ID)
	if err := os.Rename(pending, final); err != nil {
		return nil, nil, err
	}
	return nil, il, syncDir(runDir)
}

func partNames(d *fsparse.Disk) map[string]string {
	m := map[string]string{}
	for _, v := range d.Volumes {
		m[v.ID] = imagescan.PartitionName(v)
	}
	return m
}

// lines makes the result lines of res and fills il's counts and status.
func (o *Options) lines(head Head, il *ImageLine, res *scan.Result) [][]byte {
	var out [][]byte
	for _, f := range res.Findings {
		out = append(out, mustLine(&findingLine{head, f}, TypeFinding))
	}
	for _, e := range res.Errors {
		msg := ""
		if e.Err != nil {
			msg = e.Err.Error()
		}
		out = append(out, mustLine(&errorLine{head, e.Partition, e.FS, e.Path, e.Inode, msg}, TypeError))
	}
	for _, s := range res.Skipped {
		out = append(out, mustLine(&skippedLine{head, s}, TypeSkippedFile))
	}
	il.Files, il.BytesRead, il.Findings, il.Errors = res.Summary.Files, res.Summary.Bytes, len(res.Findings), len(res.Errors)
	il.Status = StatusClean
	if len(res.Findings) > 0 {
		il.Status = StatusFindings
	}
	return append(out, mustLine(il, TypeImage))
}

// mustLine encodes v (whose Head is set to type t) as one JSON line.
func mustLine(v any, t string) []byte {
	switch x := v.(type) {
	case *ImageLine:
		x.Type = t
	case *findingLine:
		x.Type = t
	case *errorLine:
		x.Type = t
	case *skippedLine:
		x.Type = t
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // plain structs: cannot fail
	}
	return b.Bytes()
}

// writeFile writes lines to a temporary file beside path (named by the
// image id, so the next poller of the image removes it when a kill left
// it), syncs it and renames it to path.
func writeFile(path, id string, lines [][]byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+id+".tmp-*")
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(tmp)
	for _, l := range lines {
		bw.Write(l)
	}
	err = bw.Flush()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// writeResult writes an image's result file: replacing what is there
// (replace), or only when there is none (a skipped image never overwrites
// the result of the poller that held the lock).
func writeResult(runDir, id, final string, lines [][]byte, replace bool) error {
	if replace {
		if err := writeFile(final, id, lines); err != nil {
			return err
		}
		return syncDir(runDir)
	}
	tmp := filepath.Join(runDir, "."+id+".skip-"+strconv.Itoa(os.Getpid()))
	if err := writeFile(tmp, id+".skip", lines); err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, final); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(runDir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
