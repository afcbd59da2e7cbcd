package dirty

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/vmscope/vmscope/internal/output"
)

// Formats are the formats WriteChanges writes.
var Formats = []string{output.Table, output.JSON, output.NDJSON}

// changesDoc is the JSON form of a selection's changes.
type changesDoc struct {
	Source  string           `json:"source"`
	Stats   map[string]Stats `json:"stats"`
	Changes []Change         `json:"changes"`
}

// WriteChanges writes the changes of s in format (one of Formats; "" is
// the table): a JSON document with the source, the per-volume statistics
// and the changes; one change per line (NDJSON); or a table with the
// change, type, path, reasons and detail of each, then the counts.
func WriteChanges(w io.Writer, format string, s *Selection) error {
	switch format {
	case output.JSON:
		cs := s.Changes
		if cs == nil {
			cs = []Change{}
		}
		return output.WriteJSON(w, changesDoc{s.Source, s.Stats, cs})
	case output.NDJSON:
		for _, ch := range s.Changes {
			if err := output.WriteNDJSON(w, ch); err != nil {
				return err
			}
		}
		return nil
	}
	tw := output.NewTable(w)
	fmt.Fprintf(tw, "CHANGE\tTYPE\tPATH\tREASONS\tDETAIL\n")
	for _, ch := range s.Changes {
		p := output.Printable(ch.Path)
		if ch.Volume != "disk" {
			p = ch.Volume + ":" + p
		}
		var why []string
		for _, k := range ch.Reasons {
			why = append(why, string(k))
		}
		detail := strings.Join(ch.Fields, ",")
		if len(ch.OldPaths) > 0 {
			detail = strings.TrimPrefix(detail+" was "+output.Printable(strings.Join(ch.OldPaths, ",")), " ")
		}
		if len(ch.Paths) > 1 {
			detail = strings.TrimSpace(detail + fmt.Sprintf(" (%d links)", len(ch.Paths)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ch.Change, ch.Type, p, strings.Join(why, ","), detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d changes (source: %s)\n", len(s.Changes), s.Source)
	vols := slices.Sorted(maps.Keys(s.Stats))
	for _, v := range vols {
		st := s.Stats[v]
		fmt.Fprintf(w, "%s: %s in changed blocks (%d blocks: %d inode-table, %d of files, %d journal, %d other); %d inodes examined\n",
			v, humanize.IBytes(uint64(st.DirtyBytes)), st.DirtyBlocks, st.InodeTableBlocks, st.FileBlocks, st.JournalBlocks, st.OtherBlocks, st.Candidates)
	}
	return nil
}
