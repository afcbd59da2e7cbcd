package timeline

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/ext4"
	"github.com/vmscope/vmscope/fsparse/jbd2"
)

// fromInode is the record of an inode version found at name.
func fromInode(vol, name string, in *ext4.Inode) Record {
	m := in.FileMode()
	r := Record{Volume: vol, Name: name, Ino: uint64(in.Ino), NameType: m.Type(), MetaType: m.Type(),
		Mode: m &^ fs.ModeType, Uid: in.Uid, Gid: in.Gid, Size: int64(in.Size),
		Atime: in.Atime, Mtime: in.Mtime, Ctime: in.Ctime}
	if in.HasCrtime {
		t := in.Crtime
		r.Crtime = &t
	}
	return r
}

// sameVersion reports whether two versions of an inode agree on what a
// timeline shows (and on links and dtime).
func sameVersion(a, b *ext4.Inode) bool {
	return a.Mode == b.Mode && a.Size == b.Size && a.Uid == b.Uid && a.Gid == b.Gid && a.Links == b.Links &&
		a.Dtime == b.Dtime && a.Mtime.Equal(b.Mtime) && a.Ctime.Equal(b.Ctime) && a.Atime.Equal(b.Atime)
}

// WalkJournal appends the earlier states the journal of v still holds, as
// records marked Source "journal seq N": every version of an inode in an
// older copy of an inode-table block that differs from the inode now, and
// every name an older copy of a directory block holds that the directory
// no longer holds (a name the kernel wiped on delete, a name before a
// rename). recs are the live records already collected (for the paths of
// inodes and directories). A volume without a journal adds nothing.
func WalkJournal(ctx context.Context, v *fsparse.Volume, prefix string, recs []Record) ([]Record, []Problem, error) {
	e := v.Ext4()
	if e == nil || e.Super().FeatureCompat&0x4 == 0 {
		return recs, nil, nil
	}
	h, err := jbd2.ReadHistory(ctx, e, v.Device)
	if err != nil {
		return recs, []Problem{{Path: prefix + "/", Err: fmt.Errorf("journal: %w", err)}}, nil
	}
	live := map[uint64]string{}     // inode -> a live path (without prefix)
	liveName := map[string]uint64{} // live path -> inode
	var dirs []Record
	for _, r := range recs {
		if r.Deleted || r.Source != "" || r.Volume != v.ID {
			continue
		}
		p := r.Name[len(prefix):]
		if _, ok := live[r.Ino]; !ok {
			live[r.Ino] = p
		}
		liveName[p] = r.Ino
		if r.NameType.IsDir() {
			dirs = append(dirs, r)
		}
	}
	live[2] = "/"
	// The directory that owns a block, for copies of blocks other than a
	// directory's first: from the current block maps, built on first use.
	var owner map[uint64]uint64
	ownerOf := func(blk uint64) uint64 {
		if owner == nil {
			owner = map[uint64]uint64{}
			for _, d := range append(dirs, Record{Ino: 2}) {
				ext, err := e.Extents(uint32(d.Ino))
				if err != nil {
					continue
				}
				for _, x := range ext {
					for i := uint64(0); i < x.Len && i < 1<<20; i++ {
						owner[x.Physical+i] = d.Ino
					}
				}
			}
		}
		return owner[blk]
	}
	type name struct {
		path string
		seq  uint32
	}
	jnames := map[uint64][]name{}
	seenName := map[string]bool{}
	versions := map[uint64][]*ext4.Inode{} // by inode, in sequence order
	vseq := map[*ext4.Inode]uint32{}
	for _, c := range h.Copies {
		if err := ctx.Err(); err != nil {
			return recs, nil, err
		}
		b, err := h.Read(c)
		if err != nil {
			continue
		}
		if ins, ok := e.InodesInCopy(c.FSBlock, b); ok {
			for _, in := range ins {
				versions[uint64(in.Ino)] = append(versions[uint64(in.Ino)], in)
				vseq[in] = c.Seq
			}
			continue
		}
		d, ok := e.DirInCopy(b)
		if !ok {
			continue
		}
		dirIno := uint64(d.Self)
		if dirIno == 0 {
			dirIno = ownerOf(c.FSBlock)
		}
		dp, ok := live[dirIno]
		if !ok {
			continue
		}
		for _, s := range d.Entries {
			p := path.Join(dp, fsparse.EscapeName(s.Name))
			if liveName[p] == uint64(s.Ino) || seenName[p+"|"+strconv.Itoa(int(s.Ino))] {
				continue
			}
			seenName[p+"|"+strconv.Itoa(int(s.Ino))] = true
			jnames[uint64(s.Ino)] = append(jnames[uint64(s.Ino)], name{p, c.Seq})
		}
	}
	src := func(seq uint32) string { return "journal seq " + strconv.FormatUint(uint64(seq), 10) }
	seenRec := map[string]bool{}
	var extra []Record
	add := func(r Record) {
		k := string(r.AppendBody(nil))
		if !seenRec[k] {
			seenRec[k] = true
			extra = append(extra, r)
		}
	}
	// Earlier names: with the inode as the latest journal copy up to that
	// transaction holds it, else as it is now.
	for ino, ns := range jnames {
		for _, n := range ns {
			var in *ext4.Inode
			for _, ver := range versions[ino] {
				if int32(vseq[ver]-n.seq) <= 0 {
					in = ver
				}
			}
			if in == nil {
				cur, err := e.Inode(uint32(ino))
				if err != nil {
					continue
				}
				in = cur
			}
			r := fromInode(v.ID, prefix+n.path, in)
			r.Source = src(n.seq)
			add(r)
		}
	}
	// Earlier versions of inodes, under their live path, else their
	// journal names, else as TSK names an unnamed inode.
	for ino, vs := range versions {
		cur, err := e.Inode(uint32(ino))
		if err != nil {
			continue
		}
		for _, in := range vs {
			if sameVersion(in, cur) {
				continue
			}
			var paths []string
			if p, ok := live[ino]; ok {
				paths = append(paths, p)
			} else {
				for _, n := range jnames[ino] {
					paths = append(paths, n.path)
				}
			}
			if len(paths) == 0 {
				paths = append(paths, "/$OrphanFiles/OrphanFile-"+strconv.FormatUint(ino, 10))
			}
			for _, p := range paths {
				r := fromInode(v.ID, prefix+p, in)
				r.Source = src(vseq[in])
				add(r)
			}
		}
	}
	sort.Slice(extra, func(i, j int) bool {
		return string(extra[i].AppendBody(nil)) < string(extra[j].AppendBody(nil))
	})
	return append(recs, extra...), nil, nil
}
