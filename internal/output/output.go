// Package output holds what every vmscope command shares to write its
// report: the formats (table, json, ndjson), their writers, and the
// one-line summary of the problems a command met on the way.
//
// Promises: JSON is written without HTML escaping, indented (JSON) or one
// value per line (NDJSON), each ending with a newline; tables are aligned
// by one tabwriter setting for every command; the callers sort what they
// write, so a report is the same whatever the order work was done in.
// Guest names are escaped for a terminal by [Printable].
package output

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/vmscope/vmscope/internal/escape"
)

// The formats every listing command offers (scan adds sarif).
const (
	Table  = "table"
	JSON   = "json"
	NDJSON = "ndjson"
)

// ErrFormat is the error of a --format value a command does not offer.
var ErrFormat = errors.New("unknown output format")

// Check returns nil when format is one of allowed, else an error wrapping
// ErrFormat that lists them.
func Check(format string, allowed ...string) error {
	for _, a := range allowed {
		if format == a {
			return nil
		}
	}
	return &formatError{format, allowed}
}

type formatError struct {
	format  string
	allowed []string
}

func (e *formatError) Error() string {
	return fmt.Sprintf("--format %q: want one of %s", e.format, strings.Join(e.allowed, ", "))
}

func (e *formatError) Is(target error) bool { return target == ErrFormat }

// WriteJSON writes v as indented JSON with a final newline.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// WriteNDJSON writes v as one line of JSON.
func WriteNDJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// NewTable returns the tabwriter every command's table uses; the caller
// flushes it.
func NewTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// Printable escapes a guest name for a terminal: bytes that are not valid
// UTF-8, and control characters, are shown as octal escapes like ls -b.
func Printable(s string) string { return escape.Octal(s) }

// ErrPartial is what a command returns when it wrote its output but met
// problems on the way (reported already): it maps to exit status 2.
var ErrPartial = errors.New("completed with errors")

// ProblemsError is ErrPartial with the one-line summary a command prints
// on stderr, in every output format (a JSON report carries the problems
// in its own array, and stderr still says so).
type ProblemsError struct {
	N     int    // how many problems
	First string // the first one, on one line, cut at 300 bytes
}

// Problems returns a *ProblemsError for n problems, first being the first
// one (an error or a string); n == 0 gives nil.
func Problems(n int, first any) error {
	if n == 0 {
		return nil
	}
	f := strings.Join(strings.Fields(fmt.Sprint(first)), " ")
	if len(f) > 300 {
		f = f[:300] + "..."
	}
	return &ProblemsError{N: n, First: f}
}

func (e *ProblemsError) Error() string {
	s := "s"
	if e.N == 1 {
		s = ""
	}
	return fmt.Sprintf("%d problem%s; the first: %s", e.N, s, e.First)
}

// Is makes a *ProblemsError match ErrPartial.
func (e *ProblemsError) Is(target error) bool { return target == ErrPartial }

// Counter counts the problems a command met and keeps the first, for the
// summary the command prints on stderr. It is safe for concurrent use.
type Counter struct {
	mu    sync.Mutex
	n     int
	first any
}

// Add counts one problem (an error or a string).
func (p *Counter) Add(what any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		p.first = what
	}
	p.n++
}

// Err is nil without problems, else Problems' summary of them.
func (p *Counter) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Problems(p.n, p.first)
}

// Stream writes a listing one record at a time, in bounded memory: as one
// JSON array (streamed, "[]" when empty), as NDJSON, or as the lines the
// table callback writes. Close ends it and flushes.
type Stream struct {
	w      *bufio.Writer
	format string
	n      int
}

// NewStream starts a listing in format (Table, JSON or NDJSON) on w.
func NewStream(w io.Writer, format string) *Stream {
	return &Stream{w: bufio.NewWriterSize(w, 64<<10), format: format}
}

// Write adds one record: v as JSON in the JSON formats, else what table
// writes.
func (s *Stream) Write(v any, table func(w io.Writer)) error {
	switch s.format {
	case JSON, NDJSON:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		if s.format == JSON {
			if s.n == 0 {
				s.w.WriteString("[\n  ")
			} else {
				s.w.WriteString(",\n  ")
			}
		}
		s.w.Write(b)
		if s.format == NDJSON {
			s.w.WriteByte('\n')
		}
	default:
		table(s.w)
	}
	s.n++
	return nil
}

// Close ends the JSON array and flushes.
func (s *Stream) Close() error {
	if s.format == JSON {
		if s.n == 0 {
			s.w.WriteString("[]\n")
		} else {
			s.w.WriteString("\n]\n")
		}
	}
	return s.w.Flush()
}

// Mode renders a file mode as ls -l does ("drwxr-sr-t").
func Mode(m fs.FileMode) string {
	var b strings.Builder
	switch {
	case m.IsDir():
		b.WriteByte('d')
	case m&fs.ModeSymlink != 0:
		b.WriteByte('l')
	case m&fs.ModeNamedPipe != 0:
		b.WriteByte('p')
	case m&fs.ModeSocket != 0:
		b.WriteByte('s')
	case m&fs.ModeCharDevice != 0:
		b.WriteByte('c')
	case m&fs.ModeDevice != 0:
		b.WriteByte('b')
	default:
		b.WriteByte('-')
	}
	const rwx = "rwxrwxrwx"
	p := m.Perm()
	for i := 0; i < 9; i++ {
		c := byte('-')
		if p&(1<<uint(8-i)) != 0 {
			c = rwx[i]
		}
		switch {
		case i == 2 && m&fs.ModeSetuid != 0:
			c = map[bool]byte{true: 's', false: 'S'}[c == 'x']
		case i == 5 && m&fs.ModeSetgid != 0:
			c = map[bool]byte{true: 's', false: 'S'}[c == 'x']
		case i == 8 && m&fs.ModeSticky != 0:
			c = map[bool]byte{true: 't', false: 'T'}[c == 'x']
		}
		b.WriteByte(c)
	}
	return b.String()
}
