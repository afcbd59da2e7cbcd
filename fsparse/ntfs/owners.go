package ntfs

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// Owner is the file and attribute that a run of clusters belongs to.
type Owner struct {
	Record uint64
	Type   uint32 // attribute type: 0x80 $DATA, 0xA0 index allocation, 0xB0 bitmap...
	Name   string // attribute name: the stream name of a $DATA, "$I30" of an index
	ID     uint16 // attribute id (of the extent at VCN 0)
}

// Stream is the owner as ifind and ntfscluster print its stream: "" for
// the unnamed $DATA, the name otherwise.
func (o Owner) String() string { return fmt.Sprintf("%d-%d-%d", o.Record, o.Type, o.ID) }

// Extent is a run of clusters and its owner.
type Extent struct {
	LCN, Len uint64
	Owner    Owner
}

// ClusterMap is the inverse of every run list of the volume: cluster →
// (MFT record, attribute), sorted by LCN.
type ClusterMap struct {
	ext []Extent
}

// Owners reads every in-use base MFT record and returns the cluster map of
// all its non-resident attributes ($DATA streams named and unnamed, $I30
// index allocations and bitmaps, attribute lists, reparse data). A record
// that cannot be read is skipped and reported in the joined error, with
// the map of the rest.
func (f *FS) Owners(ctx context.Context) (*ClusterMap, error) {
	m := &ClusterMap{}
	var errs []error
	for num := uint64(0); num < f.mftRecords; num++ {
		if num%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		r, err := f.ReadRecord(num)
		if err != nil {
			if len(errs) < 100 && !notRecord(err) {
				errs = append(errs, err)
			}
			continue
		}
		if !r.InUse() || r.Base != 0 {
			continue
		}
		x, err := f.buildFile(r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, s := range x.streams {
			o := Owner{Record: num, Type: s.Type, Name: s.Name, ID: s.attr.ID}
			for _, run := range s.runs {
				if !run.Sparse {
					m.ext = append(m.ext, Extent{LCN: run.LCN, Len: run.Len, Owner: o})
				}
			}
		}
	}
	sort.Slice(m.ext, func(i, j int) bool { return m.ext[i].LCN < m.ext[j].LCN })
	return m, errors.Join(errs...)
}

// notRecord: a never-used MFT slot (zeros) is not an error.
func notRecord(err error) bool { return errors.Is(err, ErrFreeSlot) }

// Extents returns the map's extents, sorted by LCN.
func (m *ClusterMap) Extents() []Extent { return m.ext }

// Lookup returns the owners of cluster lcn (several when runs of two
// files share it, which a sane volume never has).
func (m *ClusterMap) Lookup(lcn uint64) []Owner {
	i := sort.Search(len(m.ext), func(i int) bool { return m.ext[i].LCN+m.ext[i].Len > lcn })
	var out []Owner
	for ; i < len(m.ext) && m.ext[i].LCN <= lcn; i++ {
		if lcn < m.ext[i].LCN+m.ext[i].Len {
			out = append(out, m.ext[i].Owner)
		}
	}
	return out
}
