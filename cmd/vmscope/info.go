package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/fsparse/lvm"
	"github.com/vmscope/vmscope/internal/output"
	"github.com/vmscope/vmscope/qcow"
)

type infoDoc struct {
	Image       string              `json:"image"`
	Format      string              `json:"format"`
	VirtualSize int64               `json:"virtual_size"`
	Chain       []layerInfo         `json:"chain"`
	Table       string              `json:"partition_table"`
	TableID     string              `json:"partition_table_id,omitempty"`
	Partitions  []fsparse.Partition `json:"partitions"`
	Filesystems []*fsparse.Volume   `json:"filesystems"`
	PVs         []fsparse.PV        `json:"physical_volumes,omitempty"`
	VGs         []*lvm.VG           `json:"volume_groups,omitempty"`
	Encrypted   []fsparse.Encrypted `json:"encrypted,omitempty"`
	Problems    []string            `json:"problems,omitempty"`
}

type layerInfo struct {
	Depth          int          `json:"depth"`
	Path           string       `json:"path"`
	Format         string       `json:"format"`
	Version        int          `json:"version,omitempty"`
	ClusterSize    int          `json:"cluster_size,omitempty"`
	Compression    string       `json:"compression,omitempty"`
	FileSize       int64        `json:"file_size"`
	AllocatedBytes int64        `json:"allocated_bytes"`
	BackingFile    string       `json:"backing_file,omitempty"`
	BackingFormat  string       `json:"backing_format,omitempty"`
	Dirty          bool         `json:"dirty,omitempty"`
	Corrupt        bool         `json:"corrupt,omitempty"`
	Bitmaps        []bitmapInfo `json:"bitmaps,omitempty"`
}

type bitmapInfo struct {
	Name        string `json:"name"`
	Granularity int64  `json:"granularity"`
	InUse       bool   `json:"in_use"`
	Enabled     bool   `json:"enabled"`
	DirtyBytes  *int64 `json:"dirty_bytes,omitempty"` // absent when the bitmap is in use (inconsistent)
	Error       string `json:"error,omitempty"`
}

func newInfoCmd() *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "info IMAGE",
		Short: "Show the image's format, backing chain, partitions, filesystems and bitmaps",
		Args:  rangeArgs(1, 1),
		RunE: func(c *cobra.Command, args []string) error {
			return runInfo(c.Context(), args[0], format, c.OutOrStdout())
		},
	}
	c.Flags().StringVar(&format, "format", "table", "output format: table or json")
	return c
}

// runInfo describes image on out in format (table or json).
func runInfo(ctx context.Context, image, format string, out io.Writer) error {
	if err := checkFormat(format, output.Table, output.JSON); err != nil {
		return err
	}
	doc, err := imageInfo(ctx, image)
	if err != nil {
		return err
	}
	if format == output.JSON {
		err = output.WriteJSON(out, doc)
	} else {
		err = writeInfoTable(out, doc)
	}
	if err == nil && len(doc.Problems) > 0 {
		err = problems(len(doc.Problems), doc.Problems[0])
	}
	return err
}

// imageInfo reads what info shows of the image at path.
func imageInfo(ctx context.Context, path string) (*infoDoc, error) {
	im, d, err := openDisk(path)
	if err != nil {
		return nil, err
	}
	defer im.Close()
	doc := &infoDoc{
		Image:       path,
		Format:      string(im.Format()),
		VirtualSize: im.Size(),
		Table:       d.Table,
		TableID:     d.TableID,
		Partitions:  d.Partitions,
		Filesystems: d.Volumes,
		PVs:         d.PVs,
		VGs:         d.VGs,
		Encrypted:   d.Encrypted,
	}
	for i, l := range im.Layers() {
		alloc, err := l.Allocated(ctx)
		if err != nil {
			return nil, err
		}
		q, ok := l.(*qcow.Layer)
		if !ok { // raw: the file is the disk
			q = &qcow.Layer{FileSize: l.Size()}
			if f, ok := l.(interface{ FileBytes() int64 }); ok { // vmdk, vpc, vhdx
				q.FileSize = f.FileBytes()
			}
			if b := l.Backing(); b != nil {
				q.BackingRef, q.BackingFormat = b.Name(), b.Format()
			}
		}
		li := layerInfo{
			Depth: i, Path: l.Name(), Format: l.Format(), Version: q.Version,
			ClusterSize: q.ClusterSize, Compression: q.Compression, FileSize: q.FileSize,
			AllocatedBytes: alloc.Bytes(), BackingFile: q.BackingRef, BackingFormat: q.BackingFormat,
			Dirty: q.Dirty, Corrupt: q.Corrupt,
		}
		for _, b := range q.Bitmaps {
			bi := bitmapInfo{Name: b.Name, Granularity: b.Granularity, InUse: b.InUse, Enabled: b.Enabled}
			if !b.InUse {
				set, err := q.BitmapDirty(ctx, b.Name)
				if err != nil {
					bi.Error = err.Error()
				} else {
					n := set.Bytes()
					bi.DirtyBytes = &n
				}
			}
			li.Bitmaps = append(li.Bitmaps, bi)
		}
		doc.Chain = append(doc.Chain, li)
	}
	for _, p := range d.Problems {
		doc.Problems = append(doc.Problems, p.Error())
	}
	if doc.Partitions == nil {
		doc.Partitions = []fsparse.Partition{}
	}
	if doc.Filesystems == nil {
		doc.Filesystems = []*fsparse.Volume{}
	}
	return doc, nil
}

func size(n int64) string { return fmt.Sprintf("%s (%d bytes)", humanize.IBytes(uint64(n)), n) }

func writeInfoTable(w io.Writer, doc *infoDoc) error {
	tw := output.NewTable(w)
	fmt.Fprintf(tw, "image:\t%s\n", doc.Image)
	fmt.Fprintf(tw, "format:\t%s\n", doc.Format)
	fmt.Fprintf(tw, "virtual size:\t%s\n", size(doc.VirtualSize))
	tw.Flush()
	fmt.Fprintf(w, "\nbacking chain (top first):\n")
	tw = output.NewTable(w)
	fmt.Fprintf(tw, "  depth\tformat\tcluster\tallocated\tfile size\tpath\tbacking\n")
	for _, l := range doc.Chain {
		f := l.Format
		if l.Version > 0 {
			f = fmt.Sprintf("%s v%d", f, l.Version)
		}
		if l.Compression != "" {
			f += " " + l.Compression
		}
		cl := "-"
		if l.ClusterSize > 0 {
			cl = humanize.IBytes(uint64(l.ClusterSize))
		}
		back := "-"
		if l.BackingFile != "" {
			back = l.BackingFile
			if l.BackingFormat != "" {
				back += " (" + l.BackingFormat + ")"
			}
		}
		var flags []string
		if l.Dirty {
			flags = append(flags, "dirty")
		}
		if l.Corrupt {
			flags = append(flags, "CORRUPT")
		}
		if len(flags) > 0 {
			f += " [" + strings.Join(flags, ",") + "]"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Depth, f, cl, humanize.IBytes(uint64(l.AllocatedBytes)), humanize.IBytes(uint64(l.FileSize)), l.Path, back)
	}
	tw.Flush()
	fmt.Fprintf(w, "\npartition table: %s", doc.Table)
	if doc.TableID != "" {
		fmt.Fprintf(w, " (id %s)", doc.TableID)
	}
	fmt.Fprintln(w)
	tw = output.NewTable(w)
	fmt.Fprintf(tw, "  id\tstart\tsize\ttype\tname\n")
	for _, p := range doc.Partitions {
		tn := p.Type
		if p.TypeName != "" {
			tn = p.TypeName
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\t%s\n", p.ID(), p.Start, humanize.IBytes(uint64(p.Size)), tn, p.Name)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nfilesystems:\n")
	tw = output.NewTable(w)
	fmt.Fprintf(tw, "  id\ttype\tlabel\tuuid\tblock\tinodes\tfeatures\n")
	for _, v := range doc.Filesystems {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.ID, v.Type, printable(v.Label), v.UUID, humanize.IBytes(uint64(v.BlockSize)), v.Inodes, strings.Join(v.Features, " "))
	}
	tw.Flush()
	writeVolumeInfo(w, doc)
	var any bool
	for _, l := range doc.Chain {
		for _, b := range l.Bitmaps {
			if !any {
				fmt.Fprintf(w, "\nbitmaps:\n")
				any = true
			}
			state := "disabled"
			if b.Enabled {
				state = "enabled"
			}
			if b.InUse {
				state += ", IN USE (inconsistent: QEMU has the image open or did not stop cleanly)"
			}
			dirty := ""
			switch {
			case b.DirtyBytes != nil:
				dirty = "  dirty " + humanize.IBytes(uint64(*b.DirtyBytes))
			case b.Error != "":
				dirty = "  error: " + b.Error
			}
			fmt.Fprintf(w, "  layer %d  %s  granularity %s  %s%s\n", l.Depth, printable(b.Name), humanize.IBytes(uint64(b.Granularity)), state, dirty)
		}
	}
	for _, p := range doc.Problems {
		fmt.Fprintf(w, "\nproblem: %s\n", p)
	}
	return nil
}
