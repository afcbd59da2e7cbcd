package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// benchTree links (or copies) up to n regular files of /usr (1 byte to
// 256 KiB) into dir/tree/dI/fJ (I = J / 1000), the layout the guest's
// churn command rewrites, and returns how many it placed.
func benchTree(b testing.TB, dir string, n int) int {
	b.Helper()
	i := 0
	filepath.WalkDir("/usr", func(p string, d fs.DirEntry, err error) error {
		if i >= n {
			return filepath.SkipAll
		}
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.Size() == 0 || info.Size() > 256<<10 {
			return nil
		}
		dst := filepath.Join(dir, "tree", fmt.Sprintf("d%d", i/1000), fmt.Sprintf("f%d", i))
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if os.Link(p, dst) != nil {
			src, err := os.Open(p)
			if err != nil {
				return nil
			}
			out, err := os.Create(dst)
			if err == nil {
				_, err = io.Copy(out, src)
				out.Close()
			}
			src.Close()
			if err != nil {
				return nil
			}
		}
		i++
		return nil
	})
	return i
}

var reLiveStats = regexp.MustCompile(`live: (\S+ \S+) read over NBD in \S+; the fleecing image took (\S+ \S+)`)

// timed runs vmscope with args on the guest and returns its wall time,
// the guest workload's rate (ticks/s) during it, and its stderr.
func (lg *pollGuest) timed(args ...string) (time.Duration, float64, string) {
	lg.t.Helper()
	t0, k0 := time.Now(), lg.ticks()
	_, errOut, code := lg.run(nil, args...)
	d, k1 := time.Since(t0), lg.ticks()
	if code != 0 && code != 1 {
		lg.t.Fatalf("vmscope %v: exit %d: %s", args, code, errOut)
	}
	return d, float64(k1-k0) / d.Seconds(), errOut
}

// idleRate is the guest workload's rate (ticks/s) over d with nothing
// running on the host.
func (lg *pollGuest) idleRate(d time.Duration) float64 {
	t0, k0 := time.Now(), lg.ticks()
	time.Sleep(d)
	return float64(lg.ticks()-k0) / time.Since(t0).Seconds()
}

// BenchmarkRunningGuest (bench/running.sh) measures the live dirty poll on
// a running guest: a 2 GiB ext4 disk of 50,000 real files (from /usr), a
// background writer in the guest, 1 % of the files rewritten between
// polls. In the same run, the peer: the full live scan of the same guest
// (vmscope scan --guest). It reports each one's time, the bytes it read
// over NBD, the fleecing image's growth, the guest workload's rate during
// each and while idle, and the ratios. The run fails if the guest was
// ever seen paused (query-status sampled every 10 ms) or its workload
// counter stood still during a command.
func BenchmarkRunningGuest(b *testing.B) {
	const files = 50000
	dir := b.TempDir()
	if n := benchTree(b, dir, files); n < files {
		b.Fatalf("only %d files under /usr", n)
	}
	lg := bootLive(b, 2048, dir, "")
	os.RemoveAll(filepath.Join(dir, "tree"))
	state := filepath.Join(b.TempDir(), "state.db")
	rules := filepath.Join(b.TempDir(), "r.yar")
	os.WriteFile(rules, []byte(`rule churned { strings: $c = "churn 7 " condition: $c }`), 0o644)
	scan := func(extra ...string) (time.Duration, float64, string) {
		return lg.timed(append([]string{"scan", "--guest", lg.spec, "--rules", rules, "--format", "json", "--progress", "never"}, extra...)...)
	}
	idle := lg.idleRate(10 * time.Second)
	full, fullRate, fullErr := scan()
	first, _, _ := scan("--dirty", "live", "--state", state)
	b.ResetTimer()
	var poll time.Duration
	var pollRate float64
	var pollErr string
	for i := 0; i < b.N; i++ {
		lg.send(fmt.Sprintf("churn %d %d %d", files/100, 7+i, files), "=== CHURN DONE ===", 5*time.Minute)
		d, r, e := scan("--dirty", "live", "--state", state)
		poll += d
		pollRate += r
		pollErr = e
	}
	b.StopTimer()
	poll /= time.Duration(b.N)
	pollRate /= float64(b.N)
	stats := func(s string) string {
		if m := reLiveStats.FindStringSubmatch(s); m != nil {
			return "read " + m[1] + ", fleecing image " + m[2]
		}
		return "?"
	}
	b.Logf("guest: %d files on a 2 GiB ext4 disk; 1%% (%d files) rewritten before each poll", files, files/100)
	b.Logf("full live scan: %v (%s); guest workload %.1f ticks/s", full.Round(time.Millisecond), stats(fullErr), fullRate)
	b.Logf("first poll (indexes everything): %v", first.Round(time.Millisecond))
	b.Logf("poll after 1%% churn: %v (%s); guest workload %.1f ticks/s", poll.Round(time.Millisecond), stats(pollErr), pollRate)
	b.Logf("guest workload idle: %.1f ticks/s", idle)
	b.Logf("full scan / poll: %.1fx (goal >= 20); guest rate during the poll: %.1f%% of idle (goal >= 95%%); paused: never (sampled every 10 ms)",
		full.Seconds()/poll.Seconds(), 100*pollRate/idle)
	b.ReportMetric(poll.Seconds(), "poll-s")
	b.ReportMetric(full.Seconds(), "fullscan-s")
	b.ReportMetric(full.Seconds()/poll.Seconds(), "full/poll")
	b.ReportMetric(100*pollRate/idle, "guest-rate-%")
}
