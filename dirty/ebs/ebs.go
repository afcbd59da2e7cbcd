// Package ebs is a dirty source over the AWS EBS direct APIs: the blocks
// that differ between two snapshots of one lineage (ListChangedBlocks)
// are the dirty ranges, and each snapshot is an io.ReaderAt
// (ListSnapshotBlocks, GetSnapshotBlock), so the file mapper and the
// scanner run on a snapshot without creating a volume.
//
// Promises:
//
//   - Every response is checked before it is used: the block size (a power
//     of two, 4 KiB to 1 MiB, the same on every page), the volume size
//     (1 GiB to 64 TiB), each block index (below the volume's block count,
//     strictly increasing), the pages (a bounded count, a NextToken never
//     seen before), a block's length and its SHA-256. A bad response is a
//     *BlockError naming the snapshot and the block, wrapping ErrCorrupt.
//   - Block tokens expire: a token past its ExpiryTime, or refused by the
//     service as expired, is listed again and the read retried once.
//   - Throttling and transient errors are retried by the SDK's retryer (the
//     caller's client options); this package retries nothing else.
//   - Nothing is written: snapshots are read-only evidence.
package ebs

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsebs "github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ebs/types"

	"github.com/vmscope/vmscope/dirty/source"
	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/vmerr"
)

// API is the part of the EBS direct APIs client this package uses
// (*ebs.Client implements it).
type API interface {
	ListChangedBlocks(ctx context.Context, in *awsebs.ListChangedBlocksInput, opts ...func(*awsebs.Options)) (*awsebs.ListChangedBlocksOutput, error)
	ListSnapshotBlocks(ctx context.Context, in *awsebs.ListSnapshotBlocksInput, opts ...func(*awsebs.Options)) (*awsebs.ListSnapshotBlocksOutput, error)
	GetSnapshotBlock(ctx context.Context, in *awsebs.GetSnapshotBlockInput, opts ...func(*awsebs.Options)) (*awsebs.GetSnapshotBlockOutput, error)
}

// ErrCorrupt: a response of the service that cannot be right.
var ErrCorrupt = vmerr.New("ebs: bad response", vmerr.ErrCorrupt)

// BlockError is a problem with one block (or the page after it) of a
// snapshot.
type BlockError struct {
	Snapshot string
	Op       string // the API call
	Block    int64  // the block index; -1 before the first block
	Err      error
}

func (e *BlockError) Error() string {
	return fmt.Sprintf("ebs: %s %s block %d: %v", e.Op, e.Snapshot, e.Block, e.Err)
}
func (e *BlockError) Unwrap() error { return e.Err }

// Limits on what the service may answer.
const (
	minBlock     = 4 << 10
	maxBlock     = 1 << 20
	maxVolumeGiB = 64 << 10
	// PageSize is the MaxResults of each list call (the service takes 100
	// to 10,000).
	PageSize = 1000
	// refreshMargin: a token expiring sooner is listed again before use.
	refreshMargin = 30 * time.Second
)

// geometry is a snapshot's block size and volume size, as one list page
// gave them.
type geometry struct {
	blockSize int64
	blocks    int64 // volume size / block size
	size      int64 // bytes
}

func checkGeometry(op, snap string, after int64, bs *int32, vs *int64, prev *geometry) (geometry, error) {
	bad := func(f string, a ...any) (geometry, error) {
		return geometry{}, &BlockError{snap, op, after, fmt.Errorf("%w: "+f, append([]any{ErrCorrupt}, a...)...)}
	}
	if bs == nil || vs == nil {
		return bad("no BlockSize or VolumeSize")
	}
	b := int64(*bs)
	if b < minBlock || b > maxBlock || b&(b-1) != 0 {
		return bad("block size %d is not a power of two from %d to %d", b, minBlock, maxBlock)
	}
	if *vs < 1 || *vs > maxVolumeGiB {
		return bad("volume size %d GiB is not 1 to %d", *vs, maxVolumeGiB)
	}
	g := geometry{b, (*vs << 30) / b, *vs << 30}
	if prev != nil && prev.blockSize != 0 && *prev != g {
		return bad("block size %d and volume size %d bytes differ from the first page's %d and %d", g.blockSize, g.size, prev.blockSize, prev.size)
	}
	return g, nil
}

// maxPages bounds the pages of one listing of a volume of n blocks: a full
// listing at the smallest MaxResults the service takes (100) needs n/100,
// and the service may answer some pages short or empty: 64 more.
func maxPages(n int64) int64 { return n/100 + 64 }

// pager bounds a listing: at most maxPages pages, tokens never repeated,
// indexes strictly increasing and within the volume.
type pager struct {
	op, snap string
	seen     map[string]bool
	pages    int64
	last     int64
	g        geometry
}

func newPager(op, snap string) *pager {
	return &pager{op: op, snap: snap, seen: map[string]bool{}, last: -1}
}

func (p *pager) page(bs *int32, vs *int64) error {
	g, err := checkGeometry(p.op, p.snap, p.last, bs, vs, &p.g)
	if err != nil {
		return err
	}
	p.g = g
	p.pages++
	if p.pages > maxPages(g.blocks) {
		return &BlockError{p.snap, p.op, p.last, fmt.Errorf("%w: %d pages for a volume of %d blocks: NextToken never ends", ErrCorrupt, p.pages, g.blocks)}
	}
	return nil
}

func (p *pager) index(i *int32) (int64, error) {
	if i == nil {
		return 0, &BlockError{p.snap, p.op, p.last, fmt.Errorf("%w: a block without BlockIndex", ErrCorrupt)}
	}
	x := int64(*i)
	if x < 0 || x >= p.g.blocks {
		return 0, &BlockError{p.snap, p.op, x, fmt.Errorf("%w: index beyond the volume of %d blocks of %d bytes", ErrCorrupt, p.g.blocks, p.g.blockSize)}
	}
	if x <= p.last {
		return 0, &BlockError{p.snap, p.op, x, fmt.Errorf("%w: index not above the previous one (%d)", ErrCorrupt, p.last)}
	}
	p.last = x
	return x, nil
}

// next checks a NextToken: "" ends the listing; a token given before
// never ends it.
func (p *pager) next(tok *string) (bool, error) {
	if tok == nil || *tok == "" {
		return false, nil
	}
	if p.seen[*tok] {
		return false, &BlockError{p.snap, p.op, p.last, fmt.Errorf("%w: NextToken %q repeats: the listing never ends", ErrCorrupt, *tok)}
	}
	p.seen[*tok] = true
	return true, nil
}

// Changes are the blocks that differ between two snapshots.
type Changes struct {
	First, Second string
	BlockSize     int64
	Size          int64   // the volume's bytes
	Blocks        []int64 // changed block indexes, ascending
}

// Ranges are the changed blocks as guest byte ranges.
func (c *Changes) Ranges() rangeset.Set {
	var s rangeset.Set
	for _, b := range c.Blocks {
		s.Add(b*c.BlockSize, (b+1)*c.BlockSize)
	}
	return s
}

// ListChanged lists the blocks that differ between snapshots first and
// second (of one lineage; first "" lists every written block of second).
func ListChanged(ctx context.Context, api API, first, second string) (*Changes, error) {
	p := newPager("ListChangedBlocks", second)
	in := &awsebs.ListChangedBlocksInput{SecondSnapshotId: aws.String(second), MaxResults: aws.Int32(PageSize)}
	if first != "" {
		in.FirstSnapshotId = aws.String(first)
	}
	c := &Changes{First: first, Second: second}
	for {
		out, err := api.ListChangedBlocks(ctx, in)
		if err != nil {
			return nil, &BlockError{second, p.op, p.last, err}
		}
		if err := p.page(out.BlockSize, out.VolumeSize); err != nil {
			return nil, err
		}
		for _, b := range out.ChangedBlocks {
			x, err := p.index(b.BlockIndex)
			if err != nil {
				return nil, err
			}
			c.Blocks = append(c.Blocks, x)
		}
		more, err := p.next(out.NextToken)
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		in.NextToken = out.NextToken
	}
	c.BlockSize, c.Size = p.g.blockSize, p.g.size
	return c, nil
}

// Snapshot is one snapshot read through GetSnapshotBlock: an io.ReaderAt
// over the volume's bytes (blocks never written read as zeros).
type Snapshot struct {
	api API
	id  string
	g   geometry

	mu     sync.Mutex
	tokens map[int64]string
	expiry time.Time
	cache  map[int64][]byte // a few recent blocks
	order  []int64

	// BytesRead counts the block bytes fetched from the service; Relists
	// the listings of its tokens after the first (expired tokens).
	BytesRead, Relists atomic.Int64
	// Timeout bounds each ReadAt (io.ReaderAt takes no context).
	Timeout time.Duration
}

// cacheBlocks is how many blocks a Snapshot keeps.
const cacheBlocks = 16

// OpenSnapshot lists the blocks of snapshot id.
func OpenSnapshot(ctx context.Context, api API, id string) (*Snapshot, error) {
	s := &Snapshot{api: api, id: id, cache: map[int64][]byte{}, Timeout: 5 * time.Minute}
	if err := s.list(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// ID is the snapshot id.
func (s *Snapshot) ID() string { return s.id }

// Size is the volume's size in bytes.
func (s *Snapshot) Size() int64 { return s.g.size }

// BlockSize is the snapshot's block size.
func (s *Snapshot) BlockSize() int64 { return s.g.blockSize }

// list (re)reads the block tokens of the snapshot.
func (s *Snapshot) list(ctx context.Context) error {
	p := newPager("ListSnapshotBlocks", s.id)
	in := &awsebs.ListSnapshotBlocksInput{SnapshotId: aws.String(s.id), MaxResults: aws.Int32(PageSize)}
	tokens := map[int64]string{}
	var expiry time.Time
	for {
		out, err := s.api.ListSnapshotBlocks(ctx, in)
		if err != nil {
			return &BlockError{s.id, p.op, p.last, err}
		}
		if err := p.page(out.BlockSize, out.VolumeSize); err != nil {
			return err
		}
		if out.ExpiryTime != nil && (expiry.IsZero() || out.ExpiryTime.Before(expiry)) {
			expiry = *out.ExpiryTime
		}
		for _, b := range out.Blocks {
			x, err := p.index(b.BlockIndex)
			if err != nil {
				return err
			}
			if b.BlockToken == nil || *b.BlockToken == "" {
				return &BlockError{s.id, p.op, x, fmt.Errorf("%w: no BlockToken", ErrCorrupt)}
			}
			tokens[x] = *b.BlockToken
		}
		more, err := p.next(out.NextToken)
		if err != nil {
			return err
		}
		if !more {
			break
		}
		in.NextToken = out.NextToken
	}
	if s.g.blockSize != 0 && s.g != p.g {
		return &BlockError{s.id, p.op, -1, fmt.Errorf("%w: the snapshot's geometry changed between listings", ErrCorrupt)}
	}
	if s.tokens != nil {
		s.Relists.Add(1)
	}
	s.g, s.tokens, s.expiry = p.g, tokens, expiry
	return nil
}

// expired reports whether err is the service refusing an expired token.
func expired(err error) bool {
	var ve *types.ValidationException
	return errors.As(err, &ve) && ve.Reason == types.ValidationExceptionReasonInvalidBlockToken
}

// block returns the bytes of block x (nil: never written, zeros).
func (s *Snapshot) block(ctx context.Context, x int64) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.cache[x]; ok {
		return b, nil
	}
	for attempt := 0; ; attempt++ {
		if !s.expiry.IsZero() && time.Until(s.expiry) < refreshMargin {
			if err := s.list(ctx); err != nil {
				return nil, err
			}
		}
		tok, ok := s.tokens[x]
		if !ok {
			return nil, nil
		}
		b, err := s.fetch(ctx, x, tok)
		if err != nil && attempt == 0 && expired(err) {
			if err := s.list(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(s.order) >= cacheBlocks {
			delete(s.cache, s.order[0])
			s.order = s.order[1:]
		}
		s.cache[x] = b
		s.order = append(s.order, x)
		return b, nil
	}
}

// fetch reads block x with token tok and checks its length and SHA-256.
func (s *Snapshot) fetch(ctx context.Context, x int64, tok string) ([]byte, error) {
	fail := func(err error) ([]byte, error) { return nil, &BlockError{s.id, "GetSnapshotBlock", x, err} }
	out, err := s.api.GetSnapshotBlock(ctx, &awsebs.GetSnapshotBlockInput{SnapshotId: aws.String(s.id), BlockIndex: aws.Int32(int32(x)), BlockToken: aws.String(tok)})
	if err != nil {
		return fail(err)
	}
	defer out.BlockData.Close()
	if out.DataLength == nil || int64(*out.DataLength) != s.g.blockSize {
		return fail(fmt.Errorf("%w: data length %v, want the block size %d", ErrCorrupt, aws.ToInt32(out.DataLength), s.g.blockSize))
	}
	if out.ChecksumAlgorithm != types.ChecksumAlgorithmChecksumAlgorithmSha256 || out.Checksum == nil {
		return fail(fmt.Errorf("%w: checksum algorithm %q, want SHA256", ErrCorrupt, out.ChecksumAlgorithm))
	}
	b, err := io.ReadAll(io.LimitReader(out.BlockData, s.g.blockSize+1))
	if err != nil {
		return fail(err)
	}
	if int64(len(b)) != s.g.blockSize {
		return fail(fmt.Errorf("%w: %d bytes, want %d", ErrCorrupt, len(b), s.g.blockSize))
	}
	sum := sha256.Sum256(b)
	if got := base64.StdEncoding.EncodeToString(sum[:]); got != *out.Checksum {
		return fail(fmt.Errorf("%w: SHA-256 %s, the service says %s", ErrCorrupt, got, *out.Checksum))
	}
	s.BytesRead.Add(int64(len(b)))
	return b, nil
}

// ReadAt reads the volume's bytes at off (io.ReaderAt).
func (s *Snapshot) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ebs: %s: negative offset %d", s.id, off)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.Timeout)
	defer cancel()
	n := 0
	for n < len(p) {
		at := off + int64(n)
		if at >= s.g.size {
			return n, io.EOF
		}
		x := at / s.g.blockSize
		in := at - x*s.g.blockSize
		b, err := s.block(ctx, x)
		if err != nil {
			return n, err
		}
		k := int(min(int64(len(p)-n), s.g.blockSize-in, s.g.size-at))
		if b == nil {
			clear(p[n : n+k])
		} else {
			copy(p[n:n+k], b[in:])
		}
		n += k
	}
	return n, nil
}

// Source is the dirty source of snapshot Second against the older
// snapshot First of the same lineage (a dirty.Reference: the older
// snapshot's filesystems are the previous index, its bytes the reference
// of a changed block).
type Source struct {
	API           API
	First, Second string
	older         *fsparse.Disk
	// Changes is the last listing (after Since).
	Changes *Changes
}

// NewSource opens the older snapshot of the pair.
func NewSource(ctx context.Context, api API, first, second string) (*Source, *Snapshot, error) {
	old, err := OpenSnapshot(ctx, api, first)
	if err != nil {
		return nil, nil, err
	}
	d, err := fsparse.Open(old, old.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("ebs: snapshot %s: %w", first, err)
	}
	return &Source{API: api, First: first, Second: second, older: d}, old, nil
}

func (s *Source) String() string { return "ebs:" + s.First + ".." + s.Second }

// Older is the older snapshot's disk.
func (s *Source) Older() *fsparse.Disk { return s.older }

// Since returns the blocks ListChangedBlocks gives between the pair; it
// keeps no cursor (the pair is the cursor).
func (s *Source) Since(ctx context.Context, prev *source.Cursor, next *source.Cursor) (rangeset.Set, bool, error) {
	c, err := ListChanged(ctx, s.API, s.First, s.Second)
	if err != nil {
		return rangeset.Set{}, false, err
	}
	s.Changes = c
	if next != nil {
		next.Source = s.String()
	}
	return c.Ranges(), false, nil
}
