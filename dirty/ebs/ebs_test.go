package ebs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsebs "github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ebs/types"

	"github.com/vmscope/vmscope/dirty"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/qcow"
)

// fake serves local raw images as EBS snapshots of one lineage over the
// EBS direct APIs' REST protocol, on loopback. Its pages are small (at
// most page entries) to force pagination; its tokens carry a generation
// that expire() bumps; every throttle-th request is answered 429
// ThrottlingException. hostile switches one lie on.
type fake struct {
	t         *testing.T
	blockSize int64
	snaps     map[string][]byte
	page      int
	gen       atomic.Int64
	throttle  int64
	requests  atomic.Int64
	pages     atomic.Int64 // pages that had a NextToken
	throttled atomic.Int64
	hostile   string
}

const volumeGiB = 1

func (f *fake) block(snap string, x int64) []byte {
	img := f.snaps[snap]
	b := make([]byte, f.blockSize)
	if x*f.blockSize < int64(len(img)) {
		copy(b, img[x*f.blockSize:])
	}
	return b
}

func (f *fake) blocks() int64 { return (volumeGiB << 30) / f.blockSize }

func (f *fake) written(snap string) []int64 {
	var out []int64
	zero := make([]byte, f.blockSize)
	for x := int64(0); x*f.blockSize < int64(len(f.snaps[snap])); x++ {
		if !bytes.Equal(f.block(snap, x), zero) {
			out = append(out, x)
		}
	}
	return out
}

func (f *fake) changed(first, second string) []int64 {
	var out []int64
	n := max(len(f.snaps[first]), len(f.snaps[second]))
	for x := int64(0); x*f.blockSize < int64(n); x++ {
		if !bytes.Equal(f.block(first, x), f.block(second, x)) {
			out = append(out, x)
		}
	}
	return out
}

func (f *fake) token(snap string, x int64) string {
	return fmt.Sprintf("%s.%d.%d", snap, x, f.gen.Load())
}

func writeErr(w http.ResponseWriter, code int, typ, msg, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-Errortype", typ)
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"Message": msg, "Reason": reason})
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.requests.Add(1)
	if f.throttle > 0 && n%f.throttle == 0 {
		f.throttled.Add(1)
		writeErr(w, 429, "ThrottlingException", "Rate exceeded", "")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	q := r.URL.Query()
	if len(parts) < 3 || parts[0] != "snapshots" {
		writeErr(w, 404, "ResourceNotFoundException", "no such path", "")
		return
	}
	snap := parts[1]
	if _, ok := f.snaps[snap]; !ok {
		writeErr(w, 404, "ResourceNotFoundException", "no snapshot "+snap, "SNAPSHOT_NOT_FOUND")
		return
	}
	switch {
	case len(parts) == 3 && parts[2] == "changedblocks":
		first := q.Get("firstSnapshotId")
		var xs []int64
		if first == "" {
			xs = f.written(snap)
		} else {
			xs = f.changed(first, snap)
		}
		f.list(w, q, xs, func(x int64) any {
			m := map[string]any{"BlockIndex": x, "SecondBlockToken": f.token(snap, x)}
			if first != "" {
				m["FirstBlockToken"] = f.token(first, x)
			}
			return m
		}, "ChangedBlocks")
	case len(parts) == 3 && parts[2] == "blocks":
		f.list(w, q, f.written(snap), func(x int64) any {
			return map[string]any{"BlockIndex": x, "BlockToken": f.token(snap, x)}
		}, "Blocks")
	case len(parts) == 4 && parts[2] == "blocks":
		x, err := strconv.ParseInt(parts[3], 10, 64)
		if err != nil {
			writeErr(w, 400, "ValidationException", "bad index", "INVALID_BLOCK")
			return
		}
		if q.Get("blockToken") != f.token(snap, x) {
			writeErr(w, 400, "ValidationException", "The block token is not valid or has expired", "INVALID_BLOCK_TOKEN")
			return
		}
		b := f.block(snap, x)
		sum := sha256.Sum256(b)
		if f.hostile == "checksum" && x == f.written(snap)[1] {
			sum[0] ^= 1
		}
		w.Header().Set("x-amz-Data-Length", strconv.Itoa(len(b)))
		w.Header().Set("x-amz-Checksum", base64.StdEncoding.EncodeToString(sum[:]))
		w.Header().Set("x-amz-Checksum-Algorithm", "SHA256")
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(b)
	default:
		writeErr(w, 404, "ResourceNotFoundException", "no such path", "")
	}
}

// list answers one page of a listing, as the documented example responses
// are shaped: BlockSize, VolumeSize (GiB), ExpiryTime (epoch seconds),
// NextToken (the next start index).
func (f *fake) list(w http.ResponseWriter, q map[string][]string, xs []int64, entry func(int64) any, key string) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	maxResults, _ := strconv.Atoi(get("maxResults"))
	if maxResults < 100 || maxResults > 10000 {
		writeErr(w, 400, "ValidationException", "maxResults must be 100 to 10000", "INVALID_PARAMETER_VALUE")
		return
	}
	start := 0
	if tok := get("pageToken"); tok != "" {
		start, _ = strconv.Atoi(strings.Split(strings.TrimPrefix(tok, "page-"), "-")[0])
	}
	end := min(start+f.page, len(xs))
	var entries []any
	for _, x := range xs[start:end] {
		entries = append(entries, entry(x))
	}
	bs := f.blockSize
	resp := map[string]any{key: entries, "BlockSize": bs, "VolumeSize": volumeGiB, "ExpiryTime": float64(time.Now().Add(time.Hour).UnixMilli()) / 1000}
	if end < len(xs) {
		resp["NextToken"] = fmt.Sprintf("page-%d", end)
		f.pages.Add(1)
	}
	switch f.hostile {
	case "beyond":
		if start == 0 {
			entries = append(entries, map[string]any{"BlockIndex": f.blocks() + 3, "BlockToken": "x", "SecondBlockToken": "x"})
			resp[key] = entries
		}
	case "blocksize":
		resp["BlockSize"] = 3000
	case "endless": // after the last entry, empty pages with new tokens
		resp["NextToken"] = fmt.Sprintf("page-%d-%d", end, f.requests.Load())
	case "loop": // a token given before
		resp["NextToken"] = "page-" + strconv.Itoa(min(end, f.page))
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// client is the SDK's client on the fake: anonymous credentials, the
// standard retryer (throttling retried) with short backoffs and no
// retry quota.
func client(srv *httptest.Server) *awsebs.Client {
	return awsebs.New(awsebs.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  aws.AnonymousCredentials{},
		HTTPClient:   srv.Client(),
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 6
			o.MaxBackoff = 20 * time.Millisecond
			o.RateLimiter = ratelimit.None
		}),
	})
}

func newFake(t *testing.T) (*fake, *httptest.Server) {
	t.Helper()
	dir := filepath.Join(fixture.Root(), "testdata", "out-fleet")
	a, errA := os.ReadFile(filepath.Join(dir, "base-a.img"))
	b, errB := os.ReadFile(filepath.Join(dir, "snap-2.img"))
	if errA != nil || errB != nil {
		fixture.Missing(t, "%s/base-a.img, snap-2.img (bash testdata/fleet/build.sh)", dir)
	}
	f := &fake{t: t, blockSize: 512 << 10, snaps: map[string][]byte{"snap-0a": a, "snap-0b": b}, page: 2, throttle: 5}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

type changeKey struct {
	Volume, Path, Change string
	Rescan               bool
}

func keys(cs []dirty.Change) []changeKey {
	var out []changeKey
	for _, c := range cs {
		out = append(out, changeKey{c.Volume, c.Path, c.Change, c.Rescan})
	}
	return out
}

// TestEBSSourceMatchesBase: the files changed between two snapshots served
// by the EBS direct APIs (paginated, throttled, checksummed, with tokens
// expired mid-read) equal `--dirty base:` on the same two images; the
// changed blocks equal a byte comparison of the images.
func TestEBSSourceMatchesBase(t *testing.T) {
	ctx := context.Background()
	f, srv := newFake(t)
	api := client(srv)
	c, err := ListChanged(ctx, api, "snap-0a", "snap-0b")
	if err != nil {
		t.Fatal(err)
	}
	if want := f.changed("snap-0a", "snap-0b"); !slices.Equal(c.Blocks, want) || len(want) == 0 {
		t.Fatalf("changed blocks %v, want %v", c.Blocks, want)
	}
	src, old, err := NewSource(ctx, api, "snap-0a", "snap-0b")
	if err != nil {
		t.Fatal(err)
	}
	cur, err := OpenSnapshot(ctx, api, "snap-0b")
	if err != nil {
		t.Fatal(err)
	}
	// Every token of both snapshots expires now: reads list them again.
	f.gen.Add(1)
	curDisk, err := fsparse.Open(cur, cur.Size())
	if err != nil {
		t.Fatal(err)
	}
	sel, err := dirty.Select(ctx, nil, curDisk, src, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	defer sel.Close()

	dir := filepath.Join(fixture.Root(), "testdata", "out-fleet")
	oim, err := qcow.Open(filepath.Join(dir, "base-a.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer oim.Close()
	cim, err := qcow.Open(filepath.Join(dir, "snap-2.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer cim.Close()
	od, _ := fsparse.Open(oim, oim.Size())
	cd, _ := fsparse.Open(cim, cim.Size())
	ref, err := dirty.Compare(ctx, oim, od, cim, cd)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if g, w := keys(sel.Changes), keys(ref.Changes); !slices.Equal(g, w) || len(w) == 0 || len(sel.Errors) > 0 {
		t.Errorf("ebs changes %+v (errors %v)\nbase: changes %+v", g, sel.Errors, w)
	}
	// The due files read through the snapshot equal the image's bytes.
	for _, ch := range sel.Due() {
		_, data, err := sel.Open(ch)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, data.Size())
		if _, err := data.ReadAt(got, 0); err != nil && data.Size() > 0 {
			t.Fatalf("%s: %v", ch.Path, err)
		}
		_, wdata, _ := ref.Open(ch)
		want := make([]byte, wdata.Size())
		wdata.ReadAt(want, 0)
		if !bytes.Equal(got, want) {
			t.Errorf("%s read through the snapshot differs from the image", ch.Path)
		}
	}
	if old.Relists.Load()+cur.Relists.Load() == 0 {
		t.Error("no expired token was listed again")
	}
	if f.pages.Load() < 4 {
		t.Errorf("%d listing pages: pagination untested", f.pages.Load())
	}
	if f.throttled.Load() == 0 {
		t.Error("no request was throttled: the retry path is untested")
	}
	t.Logf("%d requests (%d throttled), %d + %d block bytes read, %d changed blocks of %d", f.requests.Load(), f.throttled.Load(), old.BytesRead.Load(), cur.BytesRead.Load(), len(c.Blocks), f.blocks())
}

// TestEBSHostile: each lie of the service is an error naming the block.
func TestEBSHostile(t *testing.T) {
	ctx := context.Background()
	for _, h := range []struct{ lie, call string }{
		{"beyond", "list"}, {"blocksize", "list"}, {"endless", "list"}, {"loop", "list"}, {"checksum", "read"},
	} {
		t.Run(h.lie, func(t *testing.T) {
			f, srv := newFake(t)
			f.hostile, f.throttle = h.lie, 0
			api := client(srv)
			var err error
			done := make(chan struct{})
			go func() {
				defer close(done)
				if h.call == "list" {
					_, err = ListChanged(ctx, api, "snap-0a", "snap-0b")
					return
				}
				var s *Snapshot
				if s, err = OpenSnapshot(ctx, api, "snap-0b"); err == nil {
					buf := make([]byte, 4<<20)
					_, err = s.ReadAt(buf, 0)
				}
			}()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("no answer in a minute")
			}
			var be *BlockError
			if !errors.As(err, &be) || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "block ") {
				t.Fatalf("%v: want a BlockError wrapping ErrCorrupt", err)
			}
			t.Logf("%v", err)
		})
	}
}

// FuzzListPages: any page answers give a sorted listing within the
// volume, or a BlockError; never a panic or an endless loop.
func FuzzListPages(f *testing.F) {
	f.Add(int32(524288), int64(1), []byte{0, 1, 5}, uint8(2))
	f.Add(int32(3000), int64(1), []byte{1}, uint8(1))
	f.Add(int32(524288), int64(0), []byte{}, uint8(0))
	f.Fuzz(func(t *testing.T, bs int32, vs int64, idx []byte, pages uint8) {
		api := &pageAPI{bs: bs, vs: vs, idx: idx, pages: int(pages)}
		c, err := ListChanged(context.Background(), api, "a", "b")
		if err != nil {
			var be *BlockError
			if !errors.As(err, &be) {
				t.Fatalf("%v: not a BlockError", err)
			}
			return
		}
		if !slices.IsSorted(c.Blocks) || len(c.Blocks) > 0 && c.Blocks[len(c.Blocks)-1]*c.BlockSize >= c.Size {
			t.Fatalf("listing %v of a %d-byte volume", c.Blocks, c.Size)
		}
	})
}

// pageAPI answers ListChangedBlocks from fuzz input: pages of the indexes
// idx (one byte each), the given number of pages, then a NextToken loop.
type pageAPI struct {
	bs    int32
	vs    int64
	idx   []byte
	pages int
	calls int
}

func (p *pageAPI) ListChangedBlocks(ctx context.Context, in *awsebs.ListChangedBlocksInput, _ ...func(*awsebs.Options)) (*awsebs.ListChangedBlocksOutput, error) {
	p.calls++
	if p.calls > 100000 {
		panic("endless listing")
	}
	out := &awsebs.ListChangedBlocksOutput{BlockSize: aws.Int32(p.bs), VolumeSize: aws.Int64(p.vs)}
	if p.calls <= len(p.idx) {
		out.ChangedBlocks = append(out.ChangedBlocks, awsTypesBlock(int32(p.idx[p.calls-1])))
	}
	if p.calls <= p.pages || p.calls <= len(p.idx) {
		out.NextToken = aws.String("t" + strconv.Itoa(p.calls%7))
	}
	return out, nil
}

func (p *pageAPI) ListSnapshotBlocks(context.Context, *awsebs.ListSnapshotBlocksInput, ...func(*awsebs.Options)) (*awsebs.ListSnapshotBlocksOutput, error) {
	return nil, errors.New("not served")
}

func (p *pageAPI) GetSnapshotBlock(context.Context, *awsebs.GetSnapshotBlockInput, ...func(*awsebs.Options)) (*awsebs.GetSnapshotBlockOutput, error) {
	return nil, errors.New("not served")
}

func awsTypesBlock(i int32) types.ChangedBlock { return types.ChangedBlock{BlockIndex: aws.Int32(i)} }
