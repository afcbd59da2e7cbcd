package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/vmscope/vmscope/internal/output"
)

// writeVolumeInfo writes the LVM volume groups (their PVs, and LVs with
// their segments) and the encrypted volumes of doc.
func writeVolumeInfo(w io.Writer, doc *infoDoc) {
	for _, vg := range doc.VGs {
		fmt.Fprintf(w, "\nvolume group %s (id %s, seqno %d, extent %s, metadata from %s):\n", printable(vg.Name), printable(vg.ID), vg.Seqno, humanize.IBytes(uint64(vg.ExtentSize)), vg.MetadataFrom)
		tw := output.NewTable(w)
		fmt.Fprintf(tw, "  pv\tuuid\ton\tpe_start\textents\n")
		for _, p := range vg.PVs {
			on := p.Where
			if p.Missing {
				on = "MISSING"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\n", printable(p.Name), printable(p.ID), on, p.PEStart, p.PECount)
		}
		tw.Flush()
		tw = output.NewTable(w)
		fmt.Fprintf(tw, "  lv\ttype\tsize\tsegments (extents: pv:extents)\tstate\n")
		for _, lv := range vg.LVs {
			var segs []string
			for _, s := range lv.Segments {
				var st []string
				for _, x := range s.Stripes {
					st = append(st, fmt.Sprintf("%s:%d-%d", printable(x.PV), x.StartExtent, x.StartExtent+s.ExtentCount/int64(len(s.Stripes))-1))
				}
				seg := fmt.Sprintf("%d-%d", s.StartExtent, s.StartExtent+s.ExtentCount-1)
				if len(st) > 0 {
					seg += ":" + strings.Join(st, ",")
				} else {
					seg += ":" + printable(s.Type)
				}
				segs = append(segs, seg)
			}
			state := "readable"
			switch {
			case lv.Error != "":
				state = "unsupported: " + lv.Error
			case !lv.Visible:
				state = "hidden"
			}
			fmt.Fprintf(tw, "  %s/%s\t%s\t%s\t%s\t%s\n", printable(vg.Name), printable(lv.Name), printable(lv.Type), humanize.IBytes(uint64(lv.Size)), strings.Join(segs, " "), state)
		}
		tw.Flush()
	}
	if len(doc.Encrypted) == 0 {
		return
	}
	fmt.Fprintf(w, "\nencrypted volumes (not scanned):\n")
	tw := output.NewTable(w)
	fmt.Fprintf(tw, "  id\tkind\tuuid\tcipher\tkey\tkeyslots\n")
	for _, e := range doc.Encrypted {
		h := e.Header
		var slots []string
		for _, k := range h.Keyslots {
			slots = append(slots, fmt.Sprint(k.Index))
		}
		key := "-"
		if h.KeyBits > 0 {
			key = fmt.Sprintf("%d bits", h.KeyBits)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", e.ID, h.Kind, printable(h.UUID), printable(h.CipherSpec()), key, strings.Join(slots, ","))
	}
	tw.Flush()
}
