package output

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	if err := Check("json", Table, JSON, NDJSON); err != nil {
		t.Errorf("json: %v", err)
	}
	err := Check("xml", Table, JSON)
	if !errors.Is(err, ErrFormat) || err.Error() != `--format "xml": want one of table, json` {
		t.Errorf("xml: %v", err)
	}
}

func TestProblems(t *testing.T) {
	if err := Problems(0, "x"); err != nil {
		t.Errorf("no problems: %v", err)
	}
	err := Problems(1, errors.New("bad\n  inode   12"))
	if !errors.Is(err, ErrPartial) || err.Error() != "1 problem; the first: bad inode 12" {
		t.Errorf("one: %v", err)
	}
	err = Problems(3, strings.Repeat("a", 400))
	var pe *ProblemsError
	if !errors.As(err, &pe) || pe.N != 3 || len(pe.First) != 303 || !strings.HasPrefix(err.Error(), "3 problems; the first: aaa") {
		t.Errorf("three: %v", err)
	}
}

func TestWriters(t *testing.T) {
	var b bytes.Buffer
	v := map[string]any{"path": "/a<b>&", "n": 1}
	if err := WriteJSON(&b, v); err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"n\": 1,\n  \"path\": \"/a<b>&\"\n}\n"; b.String() != want {
		t.Errorf("JSON %q, want %q", b.String(), want)
	}
	b.Reset()
	WriteNDJSON(&b, v)
	WriteNDJSON(&b, v)
	if want := strings.Repeat(`{"n":1,"path":"/a<b>&"}`+"\n", 2); b.String() != want {
		t.Errorf("NDJSON %q, want %q", b.String(), want)
	}
	b.Reset()
	tw := NewTable(&b)
	tw.Write([]byte("A\tBB\nCCC\tD\n"))
	tw.Flush()
	if want := "A    BB\nCCC  D\n"; b.String() != want {
		t.Errorf("table %q, want %q", b.String(), want)
	}
	if got := Printable("a\nb\xff"); got != `a\012b\377` {
		t.Errorf("Printable: %q", got)
	}
}

func TestStream(t *testing.T) {
	type rec struct {
		N int `json:"n"`
	}
	for format, want := range map[string]string{
		JSON:   "[\n  {\"n\":1},\n  {\"n\":2}\n]\n",
		NDJSON: "{\"n\":1}\n{\"n\":2}\n",
		Table:  "row 1\nrow 2\n",
	} {
		var b bytes.Buffer
		s := NewStream(&b, format)
		for i := 1; i <= 2; i++ {
			if err := s.Write(rec{i}, func(w io.Writer) { fmt.Fprintf(w, "row %d\n", i) }); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil || b.String() != want {
			t.Errorf("%s: %q %v, want %q", format, b.String(), err, want)
		}
	}
	var b bytes.Buffer
	s := NewStream(&b, JSON)
	s.Close()
	if b.String() != "[]\n" {
		t.Errorf("empty JSON listing: %q", b.String())
	}
}

func TestCounter(t *testing.T) {
	var c Counter
	if c.Err() != nil {
		t.Error("no problems: not nil")
	}
	c.Add("first one")
	c.Add(errors.New("second"))
	if err := c.Err(); !errors.Is(err, ErrPartial) || err.Error() != "2 problems; the first: first one" {
		t.Errorf("%v", err)
	}
}
