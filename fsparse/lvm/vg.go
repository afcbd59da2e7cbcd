package lvm

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

// VG is a volume group assembled from its PVs and its newest metadata.
type VG struct {
	Name       string   `json:"name"`
	ID         string   `json:"id"`
	Seqno      int64    `json:"seqno"`
	ExtentSize int64    `json:"extent_size"` // bytes
	Status     []string `json:"status,omitempty"`
	PVs        []*VGPV  `json:"pvs"`
	LVs        []*LV    `json:"lvs"`
	// Metadata is where the metadata used was read (the PV and area).
	MetadataFrom string `json:"metadata_from"`
}

// VGPV is a PV as the VG metadata lists it, with the device found for it
// (PV nil when missing).
type VGPV struct {
	Name    string `json:"name"` // "pv0"
	ID      string `json:"id"`
	Device  string `json:"device,omitempty"` // the device path when the metadata was written
	PEStart int64  `json:"pe_start"`         // bytes
	PECount int64  `json:"pe_count"`
	DevSize int64  `json:"dev_size"` // bytes
	Where   string `json:"where,omitempty"`
	Missing bool   `json:"missing,omitempty"`
	PV      *PV    `json:"-"`
}

// LV is a logical volume. Err is set when it cannot be read (an
// unsupported segment type, a missing PV); its segments are listed anyway.
type LV struct {
	Name     string    `json:"name"`
	ID       string    `json:"id"`
	Status   []string  `json:"status,omitempty"`
	Visible  bool      `json:"visible"`
	Type     string    `json:"type"` // "linear", "striped", "thin", "raid1", ...
	Extents  int64     `json:"extents"`
	Size     int64     `json:"size"` // bytes
	Segments []Segment `json:"segments"`
	Err      error     `json:"-"`
	Error    string    `json:"error,omitempty"`
	vg       *VG
}

// Segment is one segment of an LV.
type Segment struct {
	StartExtent int64    `json:"start_extent"`
	ExtentCount int64    `json:"extent_count"`
	Type        string   `json:"type"` // the metadata's type ("striped" for linear too)
	Stripes     []Stripe `json:"stripes,omitempty"`
}

// Stripe is where a stripe of a segment lies: a PV (by its VG name) and
// its first extent there.
type Stripe struct {
	PV          string `json:"pv"`
	StartExtent int64  `json:"start_extent"`
}

// Run is a run of an LV's bytes on a PV: LV bytes [Off, Off+Len) are the
// PV device's bytes [PVOff, PVOff+Len), at [Base+PVOff, ...) in the
// caller's address space of that PV.
type Run struct {
	Off, Len, PVOff int64
	PV              *PV
}

// Assemble groups PVs into volume groups. Each VG takes the valid
// metadata of highest seqno among its PVs (an older copy when the newest
// one's VG section is invalid); PVs are matched to the VG's list by UUID.
// Problems lists what was not used (a metadata area or text that is
// invalid, a PV that no VG found names).
func Assemble(pvs []*PV) ([]*VG, []vmerr.Problem) {
	var probs []vmerr.Problem
	type cand struct {
		md *Metadata
		pv *PV
	}
	cands := map[string][]cand{} // by VG name and id
	var order []string
	for _, pv := range pvs {
		probs = append(probs, pv.Problems...)
		for i := range pv.Metadata {
			md := &pv.Metadata[i]
			key := md.VGName + "/" + md.root.Sub(md.VGName).Str("id")
			if cands[key] == nil {
				order = append(order, key)
			}
			cands[key] = append(cands[key], cand{md, pv})
		}
	}
	byUUID := map[string]*PV{}
	for _, pv := range pvs {
		byUUID[strings.ReplaceAll(pv.UUID, "-", "")] = pv
	}
	used := map[*PV]bool{}
	var vgs []*VG
	for _, key := range order {
		cs := cands[key]
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].md.Seqno > cs[j].md.Seqno })
		for i, c := range cs {
			if i > 0 && c.md.Seqno == cs[i-1].md.Seqno && string(c.md.Text) == string(cs[i-1].md.Text) {
				continue // the same text, already refused
			}
			vg, err := buildVG(c.md, byUUID)
			if err != nil {
				probs = append(probs, vmerr.Problem{Where: c.pv.Where + ": volume group " + c.md.VGName, Offset: c.md.Offset, Err: err})
				continue
			}
			vg.MetadataFrom = fmt.Sprintf("%s metadata area at %d", c.pv.Where, c.md.Area)
			for _, p := range vg.PVs {
				if p.PV != nil {
					used[p.PV] = true
				}
			}
			vgs = append(vgs, vg)
			break
		}
	}
	for _, pv := range pvs {
		if !used[pv] {
			probs = append(probs, vmerr.Problem{Where: pv.Where, Offset: pv.LabelSector * sectorSize,
				Err: fmt.Errorf("lvm: PV %s belongs to no volume group found: %w", pv.UUID, ErrMissingPV)})
		}
	}
	sort.Slice(vgs, func(i, j int) bool { return vgs[i].Name < vgs[j].Name })
	return vgs, probs
}

// buildVG reads the VG section of md and checks its PVs and LVs.
func buildVG(md *Metadata, byUUID map[string]*PV) (*VG, error) {
	s := md.root.Sub(md.VGName)
	at := md.Offset
	vg := &VG{Name: md.VGName, ID: s.Str("id"), Seqno: md.Seqno, Status: s.Strings("status")}
	es, ok := s.Int("extent_size")
	if !ok || es <= 0 || es > 1<<32 {
		return nil, corrupt("metadata text", at, "VG %s: extent_size %v", vg.Name, s.Get("extent_size"))
	}
	vg.ExtentSize = es * sectorSize
	pvsec := s.Sub("physical_volumes")
	byName := map[string]*VGPV{}
	for _, p := range pvsec.Subs() {
		if len(vg.PVs) >= maxPVs {
			return nil, corrupt("metadata text", at, "VG %s: more than %d PVs", vg.Name, maxPVs)
		}
		start, ok1 := p.Int("pe_start")
		count, ok2 := p.Int("pe_count")
		dsz, _ := p.Int("dev_size")
		if !ok1 || !ok2 || start < 0 || count < 0 || start > 1<<50 || count > (1<<62)/vg.ExtentSize || dsz < 0 || dsz > 1<<50 {
			return nil, corrupt("metadata text", at, "VG %s: PV %s: pe_start %v, pe_count %v", vg.Name, p.Name, p.Get("pe_start"), p.Get("pe_count"))
		}
		v := &VGPV{Name: p.Name, ID: p.Str("id"), Device: p.Str("device"), PEStart: start * sectorSize, PECount: count, DevSize: dsz * sectorSize}
		v.PV = byUUID[strings.ReplaceAll(v.ID, "-", "")]
		if v.PV == nil {
			v.Missing = true
		} else {
			v.Where = v.PV.Where
			if end := v.PEStart + v.PECount*vg.ExtentSize; end > v.PV.Size || end < 0 {
				return nil, corrupt("metadata text", at, "VG %s: PV %s: %d extents from %d end past its %d-byte device", vg.Name, p.Name, v.PECount, v.PEStart, v.PV.Size)
			}
		}
		vg.PVs = append(vg.PVs, v)
		byName[p.Name] = v
	}
	// Every PV extent belongs to at most one linear stripe.
	type claim struct {
		start, end int64
		lv         string
	}
	claims := map[string][]claim{}
	nseg := 0
	for _, l := range s.Sub("logical_volumes").Subs() {
		if len(vg.LVs) >= maxLVs {
			return nil, corrupt("metadata text", at, "VG %s: more than %d LVs", vg.Name, maxLVs)
		}
		lv := &LV{Name: l.Name, ID: l.Str("id"), Status: l.Strings("status"), vg: vg}
		for _, st := range lv.Status {
			if st == "VISIBLE" {
				lv.Visible = true
			}
		}
		segs := l.Subs()
		sort.SliceStable(segs, func(i, j int) bool {
			a, _ := segs[i].Int("start_extent")
			b, _ := segs[j].Int("start_extent")
			return a < b
		})
		next := int64(0)
		types := map[string]bool{}
		for _, sg := range segs {
			if nseg++; nseg > maxSegments {
				return nil, corrupt("metadata text", at, "VG %s: more than %d segments", vg.Name, maxSegments)
			}
			se, ok1 := sg.Int("start_extent")
			ec, ok2 := sg.Int("extent_count")
			if !ok1 || !ok2 || se != next || ec <= 0 || ec > (1<<62)/vg.ExtentSize-se {
				return nil, corrupt("metadata text", at, "LV %s/%s: %s covers extents %v+%v, want a start at %d", vg.Name, lv.Name, sg.Name, sg.Get("start_extent"), sg.Get("extent_count"), next)
			}
			next = se + ec
			seg := Segment{StartExtent: se, ExtentCount: ec, Type: sg.Str("type")}
			typ := seg.Type
			if typ == "striped" {
				sc, _ := sg.Int("stripe_count")
				list := sg.Get("stripes").List
				if sc < 1 || sc > maxStripes || int64(len(list)) != 2*sc {
					return nil, corrupt("metadata text", at, "LV %s/%s: %s: stripe_count %d with %d list elements", vg.Name, lv.Name, sg.Name, sc, len(list))
				}
				for i := 0; i < len(list); i += 2 {
					if list[i].Kind != 's' || list[i+1].Kind != 'i' {
						return nil, corrupt("metadata text", at, "LV %s/%s: %s: stripe %d is not a PV name and an extent", vg.Name, lv.Name, sg.Name, i/2)
					}
					st := Stripe{PV: list[i].Str, StartExtent: list[i+1].Int}
					p := byName[st.PV]
					per := (ec + sc - 1) / sc
					if p == nil || st.StartExtent < 0 || st.StartExtent > p.PECount-per {
						return nil, corrupt("metadata text", at, "LV %s/%s: %s: stripe on %s extents %d+%d outside the PV", vg.Name, lv.Name, sg.Name, st.PV, st.StartExtent, per)
					}
					claims[st.PV] = append(claims[st.PV], claim{st.StartExtent, st.StartExtent + per, lv.Name})
					seg.Stripes = append(seg.Stripes, st)
				}
				if sc > 1 {
					typ = "striped"
				} else {
					typ = "linear"
				}
			}
			types[typ] = true
			lv.Segments = append(lv.Segments, seg)
		}
		if sc, ok := l.Int("segment_count"); ok && sc != int64(len(segs)) {
			return nil, corrupt("metadata text", at, "LV %s/%s: segment_count %d, %d segments", vg.Name, lv.Name, sc, len(segs))
		}
		lv.Extents = next
		lv.Size = next * vg.ExtentSize
		switch len(types) {
		case 0:
			lv.Type = "empty"
		case 1:
			for t := range types {
				lv.Type = t
			}
		default:
			var ts []string
			for t := range types {
				ts = append(ts, t)
			}
			sort.Strings(ts)
			lv.Type = strings.Join(ts, "+")
		}
		vg.LVs = append(vg.LVs, lv)
	}
	for pv, cs := range claims {
		sort.Slice(cs, func(i, j int) bool { return cs[i].start < cs[j].start })
		for i := 1; i < len(cs); i++ {
			if cs[i].start < cs[i-1].end {
				return nil, corrupt("metadata text", at, "VG %s: LVs %s and %s both claim extent %d of %s", vg.Name, cs[i-1].lv, cs[i].lv, cs[i].start, pv)
			}
		}
	}
	// A snapshot's COW store is an LV of its own: it holds exceptions, not
	// the origin's filesystem.
	for _, lv := range vg.LVs {
		for _, seg := range lv.Segments {
			if seg.Type != "snapshot" {
				continue
			}
			for _, l := range s.Sub("logical_volumes").Subs() {
				if l.Name != lv.Name {
					continue
				}
				for _, sg := range l.Subs() {
					if cow := vg.LV(sg.Str("cow_store")); cow != nil {
						cow.Type = "snapshot"
					}
				}
			}
		}
	}
	for _, lv := range vg.LVs {
		lv.Err = lv.check()
		if lv.Err != nil {
			lv.Error = lv.Err.Error()
		}
	}
	return vg, nil
}

// LV returns the LV called name, or nil.
func (vg *VG) LV(name string) *LV {
	for _, lv := range vg.LVs {
		if lv.Name == name {
			return lv
		}
	}
	return nil
}

// check says why lv cannot be read, or nil.
func (lv *LV) check() error {
	if lv.Type != "linear" {
		return fmt.Errorf("lvm: LV %s/%s is %s: %w", lv.vg.Name, lv.Name, lv.Type, ErrUnsupported)
	}
	for _, seg := range lv.Segments {
		for _, st := range seg.Stripes {
			if p := lv.vg.pv(st.PV); p == nil || p.PV == nil {
				return fmt.Errorf("lvm: LV %s/%s: %s (%s): %w", lv.vg.Name, lv.Name, st.PV, p.idOrNone(), ErrMissingPV)
			}
		}
	}
	return nil
}

func (p *VGPV) idOrNone() string {
	if p == nil {
		return "unknown"
	}
	return p.ID
}

func (vg *VG) pv(name string) *VGPV {
	for _, p := range vg.PVs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Supported reports whether the LV can be read.
func (lv *LV) Supported() bool { return lv.Err == nil }

// Map returns where the LV's bytes lie on its PVs, in LV order; the error
// of an LV that cannot be read.
func (lv *LV) Map() ([]Run, error) {
	if lv.Err != nil {
		return nil, lv.Err
	}
	es := lv.vg.ExtentSize
	var runs []Run
	for _, seg := range lv.Segments {
		st := seg.Stripes[0]
		p := lv.vg.pv(st.PV)
		runs = append(runs, Run{Off: seg.StartExtent * es, Len: seg.ExtentCount * es,
			PVOff: p.PEStart + st.StartExtent*es, PV: p.PV})
	}
	return runs, nil
}

// Open returns the LV's bytes as an io.ReaderAt of Size bytes.
func (lv *LV) Open() (io.ReaderAt, error) {
	runs, err := lv.Map()
	if err != nil {
		return nil, err
	}
	return &reader{runs: runs, size: lv.Size}, nil
}

// reader composes an LV from its runs.
type reader struct {
	runs []Run
	size int64
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("lvm: negative offset")
	}
	n := 0
	for len(p) > 0 {
		if off >= r.size {
			return n, io.EOF
		}
		i := sort.Search(len(r.runs), func(i int) bool { return r.runs[i].Off+r.runs[i].Len > off })
		if i == len(r.runs) {
			return n, io.EOF
		}
		run := r.runs[i]
		in := off - run.Off
		k := int(min(int64(len(p)), run.Len-in))
		m, err := run.PV.Dev.ReadAt(p[:k], run.PVOff+in)
		n += m
		if m < k {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, fmt.Errorf("lvm: reading extent run at PV offset %d: %w", run.PVOff+in+int64(m), err)
		}
		p, off = p[k:], off+int64(k)
	}
	return n, nil
}
