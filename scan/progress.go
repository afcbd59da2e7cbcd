package scan

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
)

// Progress is updated by Scan with atomic counters; read it from any
// goroutine. The caller may set TotalFiles/TotalBytes when it knows them
// (e.g. from the inode and block counts of the filesystem) to get an ETA.
type Progress struct {
	Files      atomic.Int64 // files done (scanned, skipped or failed)
	Bytes      atomic.Int64 // bytes scanned
	Findings   atomic.Int64
	Errors     atomic.Int64
	TotalFiles atomic.Int64 // 0: unknown
	TotalBytes atomic.Int64 // 0: unknown

	started atomic.Int64 // unix nanoseconds
}

func (p *Progress) start() { p.started.CompareAndSwap(0, time.Now().UnixNano()) }

// Elapsed is the time since Scan started (0 before).
func (p *Progress) Elapsed() time.Duration {
	s := p.started.Load()
	if s == 0 {
		return 0
	}
	return time.Since(time.Unix(0, s))
}

// Line renders one status line, e.g.
//
//	1,234/5,000 files  1.2 GB/4.0 GB  310 MB/s  ETA 9s  2 findings  0 errors
func (p *Progress) Line() string { return p.line(p.Elapsed()) }

func (p *Progress) line(elapsed time.Duration) string {
	files, bytes := p.Files.Load(), p.Bytes.Load()
	tf, tb := p.TotalFiles.Load(), p.TotalBytes.Load()
	var b strings.Builder
	b.WriteString(humanize.Comma(files))
	if tf > 0 {
		b.WriteString("/" + humanize.Comma(tf))
	}
	b.WriteString(" files  ")
	b.WriteString(humanize.Bytes(uint64(bytes)))
	if tb > 0 {
		b.WriteString("/" + humanize.Bytes(uint64(tb)))
	}
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(bytes) / s
	}
	fmt.Fprintf(&b, "  %s/s", humanize.Bytes(uint64(rate)))
	if tb > 0 && rate > 0 && bytes <= tb {
		eta := time.Duration(float64(tb-bytes) / rate * float64(time.Second)).Round(time.Second)
		fmt.Fprintf(&b, "  ETA %s", eta)
	}
	fmt.Fprintf(&b, "  %d findings  %d errors", p.Findings.Load(), p.Errors.Load())
	return b.String()
}

// Render redraws the status line on w (a terminal: "\r" and clear to end of
// line) every interval until ctx is done, then draws it a last time and
// ends the line. The CLI runs it in a goroutine when stderr is a terminal.
func (p *Progress) Render(ctx context.Context, w io.Writer, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintf(w, "\r%s\x1b[K\n", p.Line())
			return
		case <-t.C:
			fmt.Fprintf(w, "\r%s\x1b[K", p.Line())
		}
	}
}
