// Package timeline turns file metadata into the timelines incident
// responders read: the Sleuth Kit 3.x body file (what `fls -m` writes and
// `mactime -b` reads), mactime's sorted per-event CSV (what `mactime -b -d`
// writes), produced directly, and NDJSON events that keep nanoseconds.
//
// Promises:
//   - A body line is byte for byte what fls -m writes for the same metadata:
//     MD5|name|inode|mode_as_string|UID|GID|size|atime|mtime|ctime|crtime,
//     MD5 "0", times in whole seconds (0 when absent), the mode as TSK's
//     tsk_fs_name_type / tsk_fs_meta_make_ls strings ("r/rrw-r--r--"), a
//     symlink's name followed by " -> target", a deleted name by
//     " (deleted)" or " (deleted-realloc)".
//   - CSV follows mactime's rules exactly: one line per (second, inode,
//     name) with the macb flags of the times that fall in that second;
//     lines sorted as mactime sorts its keys (as strings: ten-digit time,
//     inode, name); the mode, owner and size of a name are those of the last
//     record with that name; records whose four times are all zero, and
//     negative times, are left out; dates in the zone given.
//   - Output is deterministic: the same records give the same bytes.
package timeline

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Record is one file's metadata as a timeline needs it: one line of a body
// file.
type Record struct {
	Volume string `json:"volume,omitempty"`
	// Name is the path as the body file shows it (mount prefix and path),
	// without the symlink target or deleted marks (BodyName adds them).
	Name string `json:"path"`
	Ino  uint64 `json:"inode"`
	// NameType is the type the directory entry records, MetaType the type
	// of the inode (they differ for a deleted name whose inode was reused).
	NameType fs.FileMode `json:"-"`
	MetaType fs.FileMode `json:"-"`
	// NameUnknown and MetaUnknown say the type is not known (TSK's "-"):
	// an orphan inode has no name, a cleared record no inode.
	NameUnknown bool        `json:"-"`
	MetaUnknown bool        `json:"-"`
	Mode        fs.FileMode `json:"-"` // permission, setuid, setgid and sticky bits
	Uid         uint32      `json:"uid"`
	Gid         uint32      `json:"gid"`
	Size        int64       `json:"size"`
	Atime       time.Time   `json:"-"`
	Mtime       time.Time   `json:"-"`
	Ctime       time.Time   `json:"-"`
	// Crtime is nil when the inode has no creation time.
	Crtime *time.Time `json:"-"`
	Target string     `json:"target,omitempty"` // symlink target
	// Deleted marks a name found in directory slack; Realloc says its inode
	// is in use again (by another file).
	Deleted bool `json:"deleted,omitempty"`
	Realloc bool `json:"realloc,omitempty"`
	// Source says where the record comes from when it is not the current
	// state ("journal": an older copy the journal holds).
	Source string `json:"source,omitempty"`
}

// typeChar is TSK's letter for a file type (tsk_fs_name_type_str and
// tsk_fs_meta_type_str agree on these).
func typeChar(t fs.FileMode) byte {
	switch {
	case t&fs.ModeDir != 0:
		return 'd'
	case t&fs.ModeSymlink != 0:
		return 'l'
	case t&fs.ModeNamedPipe != 0:
		return 'p'
	case t&fs.ModeSocket != 0:
		return 's'
	case t&fs.ModeCharDevice != 0:
		return 'c'
	case t&fs.ModeDevice != 0:
		return 'b'
	case t&fs.ModeIrregular != 0:
		return '-'
	}
	return 'r'
}

// ModeString is TSK's mode_as_string: the name's type, '/', the inode's
// type and the nine permission letters with s/S and t/T.
func (r *Record) ModeString() string {
	var b [12]byte
	r.modeBytes(&b)
	return string(b[:])
}

// modeBytes writes ModeString into b.
func (r *Record) modeBytes(b *[12]byte) {
	b[0] = typeChar(r.NameType)
	if r.NameUnknown {
		b[0] = '-'
	}
	b[1] = '/'
	b[2] = typeChar(r.MetaType)
	if r.MetaUnknown {
		b[2] = '-'
	}
	const rwx = "rwxrwxrwx"
	for i := 0; i < 9; i++ {
		c := byte('-')
		if r.Mode&(1<<uint(8-i)) != 0 {
			c = rwx[i]
		}
		switch {
		case i == 2 && r.Mode&fs.ModeSetuid != 0:
			c = "Ss"[b2i(c == 'x')]
		case i == 5 && r.Mode&fs.ModeSetgid != 0:
			c = "Ss"[b2i(c == 'x')]
		case i == 8 && r.Mode&fs.ModeSticky != 0:
			c = "Tt"[b2i(c == 'x')]
		}
		b[3+i] = c
	}
}

func b2i(v bool) int {
	if v {
		return 1
	}
	return 0
}

// BodyName is the name field of the body line: the name, " -> target" for
// a symlink with a target, and the deleted mark.
func (r *Record) BodyName() string {
	if r.Target == "" && !r.Deleted && r.Source == "" {
		return r.Name
	}
	return string(r.appendBodyName(nil))
}

// appendBodyName appends BodyName to b.
func (r *Record) appendBodyName(b []byte) []byte {
	b = append(b, r.Name...)
	if r.Target != "" {
		b = append(b, " -> "...)
		b = append(b, r.Target...)
	}
	switch {
	case r.Deleted && r.Realloc:
		b = append(b, " (deleted-realloc)"...)
	case r.Deleted:
		b = append(b, " (deleted)"...)
	}
	if r.Source != "" {
		b = append(b, " ("...)
		b = append(b, r.Source...)
		b = append(b, ')')
	}
	return b
}

func secs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (r *Record) crtime() time.Time {
	if r.Crtime == nil {
		return time.Time{}
	}
	return *r.Crtime
}

// AppendBody appends r's body-file line, with its newline, to b.
func (r *Record) AppendBody(b []byte) []byte {
	b = append(b, "0|"...)
	b = r.appendBodyName(b)
	b = append(b, '|')
	b = strconv.AppendUint(b, r.Ino, 10)
	b = append(b, '|')
	var m [12]byte
	r.modeBytes(&m)
	b = append(b, m[:]...)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(r.Uid), 10)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(r.Gid), 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, r.Size, 10)
	for _, t := range [4]time.Time{r.Atime, r.Mtime, r.Ctime, r.crtime()} {
		b = append(b, '|')
		b = strconv.AppendInt(b, secs(t), 10)
	}
	return append(b, '\n')
}

// InRange reports whether any of r's times lies in [since, until) (a zero
// bound is open).
func (r *Record) InRange(since, until time.Time) bool {
	for _, t := range []time.Time{r.Atime, r.Mtime, r.Ctime, r.crtime()} {
		if !t.IsZero() && inRange(t, since, until) {
			return true
		}
	}
	return false
}

func inRange(t, since, until time.Time) bool {
	return (since.IsZero() || !t.Before(since)) && (until.IsZero() || t.Before(until))
}

// WriteBody writes the records as a body file.
func WriteBody(w io.Writer, recs []Record) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	var b []byte
	for i := range recs {
		b = recs[i].AppendBody(b[:0])
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Event is the times of one file that fall in one second (CSV) or one
// instant (NDJSON): MACB has a letter for each ("m.c." = modified and
// changed then).
type Event struct {
	Time time.Time
	MACB string
	Rec  *Record
	name string // the name as mactime keys it
	key  string
}

func macb(flags byte) string {
	b := []byte("....")
	for i, c := range "macb" {
		if flags&(1<<i) != 0 {
			b[i] = byte(c)
		}
	}
	return string(b)
}

// unescape decodes %XX as mactime's tm_split does to every field.
func unescape(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			v, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(v))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// CSVEvents groups the records' times by (second, inode, name) as mactime
// does, keeps those in [since, until) (zero bounds are open), and sorts
// them in mactime's order. The Rec of an event is the last record with
// its name (mactime keeps one mode, owner and size per name).
func CSVEvents(recs []Record, since, until time.Time) []Event {
	type k struct {
		sec  int64
		ino  uint64
		name string
	}
	idx := map[k]int{}
	last := map[string]*Record{}
	var out []Event
	var flags []byte
	for i := range recs {
		r := &recs[i]
		ts := [4]time.Time{r.Mtime, r.Atime, r.Ctime, r.crtime()}
		var s [4]int64
		all0 := true
		for j, t := range ts {
			s[j] = secs(t)
			if s[j] != 0 {
				all0 = false
			}
		}
		in := int64(0)
		if !since.IsZero() {
			in = since.Unix()
		}
		if all0 || (s[0] < in && s[1] < in && s[2] < in && s[3] < in) {
			continue
		}
		name := unescape(r.BodyName())
		last[name] = r
		for j := range ts {
			if s[j] < 0 {
				continue
			}
			at := time.Unix(s[j], 0)
			if !inRange(at, since, until) {
				continue
			}
			key := k{s[j], r.Ino, name}
			n, ok := idx[key]
			if !ok {
				n = len(out)
				idx[key] = n
				out = append(out, Event{Time: at, name: name,
					key: fmt.Sprintf("%.10d,%d,%s", s[j], r.Ino, name)})
				flags = append(flags, 0)
			}
			flags[n] |= 1 << j
		}
	}
	for i := range out {
		out[i].MACB = macb(flags[i])
		out[i].Rec = last[out[i].name]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

var (
	days   = [...]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
	months = [...]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
)

// mactimeDate formats t in loc as mactime does ("Thu Mar 14 2024
// 15:09:27"; the epoch is "Xxx Xxx 00 0000 00:00:00").
func mactimeDate(t time.Time, loc *time.Location) string {
	if t.Unix() == 0 {
		return "Xxx Xxx 00 0000 00:00:00"
	}
	t = t.In(loc)
	return fmt.Sprintf("%s %s %02d %d %02d:%02d:%02d", days[t.Weekday()], months[t.Month()-1],
		t.Day(), t.Year(), t.Hour(), t.Minute(), t.Second())
}

// WriteCSV writes events as `mactime -b BODY -d` does, dates in loc.
func WriteCSV(w io.Writer, evs []Event, loc *time.Location) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	bw.WriteString("Date,Size,Type,Mode,UID,GID,Meta,File Name\n")
	for _, e := range evs {
		r := e.Rec
		fmt.Fprintf(bw, "%s,%d,%s,%s,%d,%d,%d,\"%s\"\n", mactimeDate(e.Time, loc), r.Size, e.MACB,
			r.ModeString(), r.Uid, r.Gid, r.Ino, strings.ReplaceAll(e.name, `"`, `""`))
	}
	return bw.Flush()
}

// JSONEvent is one NDJSON line of the timeline: the times of one file that
// fall at one instant, to the nanosecond.
type JSONEvent struct {
	Time   time.Time `json:"time"`
	MACB   string    `json:"macb"`
	Volume string    `json:"volume,omitempty"`
	Path   string    `json:"path"`
	Ino    uint64    `json:"inode"`
	Mode   string    `json:"mode"`
	Uid    uint32    `json:"uid"`
	Gid    uint32    `json:"gid"`
	Size   int64     `json:"size"`
	Target string    `json:"target,omitempty"`
	// Deleted, Realloc and Source are as in Record.
	Deleted bool   `json:"deleted,omitempty"`
	Realloc bool   `json:"realloc,omitempty"`
	Source  string `json:"source,omitempty"`
}

// JSONEvents lists the records' times to the nanosecond, grouped per
// (instant, record), those in [since, until), sorted by time, then path,
// inode and flags. Absent (zero) times are left out.
func JSONEvents(recs []Record, since, until time.Time) []JSONEvent {
	var out []JSONEvent
	for i := range recs {
		r := &recs[i]
		ts := [4]time.Time{r.Mtime, r.Atime, r.Ctime, r.crtime()}
		var done [4]bool
		for j, t := range ts {
			if done[j] || t.IsZero() || !inRange(t, since, until) {
				continue
			}
			var fl byte
			for m := j; m < 4; m++ {
				if !done[m] && ts[m].Equal(t) {
					fl |= 1 << m
					done[m] = true
				}
			}
			out = append(out, JSONEvent{Time: t.UTC(), MACB: macb(fl), Volume: r.Volume, Path: strings.TrimPrefix(r.Name, r.Volume+":"),
				Ino: r.Ino, Mode: r.ModeString(), Uid: r.Uid, Gid: r.Gid, Size: r.Size, Target: r.Target,
				Deleted: r.Deleted, Realloc: r.Realloc, Source: r.Source})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := &out[i], &out[j]
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Volume != b.Volume {
			return a.Volume < b.Volume
		}
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		if a.Ino != b.Ino {
			return a.Ino < b.Ino
		}
		return a.MACB < b.MACB
	})
	return out
}

// WriteNDJSON writes events one JSON object a line.
func WriteNDJSON(w io.Writer, evs []JSONEvent) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for i := range evs {
		if err := enc.Encode(&evs[i]); err != nil {
			return err
		}
	}
	return bw.Flush()
}
