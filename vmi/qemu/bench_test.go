package qemu

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vmscope/vmscope/vmi"
)

// BenchmarkLiveRead reads the running fixture guest (512 MiB, TCG)
// through the GDB stub and from the QEMU process: all of its RAM in 4 MiB
// reads (MiB/s), 10,000 random 8-byte reads (µs/read), and
// attach-to-first-answer (Open, the registers of every vCPU, 8 bytes at
// the page-table root, Close). bench/live.sh runs it and prints the
// ratios.
func BenchmarkLiveRead(b *testing.B) {
	pg := bootProc(b, 512)
	ctx := context.Background()
	specs := []struct{ name, spec string }{
		{"stub", "gdb://" + pg.G.GDBAddr + ",qmp=unix:" + pg.QMP},
		{"process", fmt.Sprintf("qemu:pid=%d,qmp=unix:%s,gdb=%s", pg.G.PID(), pg.QMP, pg.G.GDBAddr)},
	}
	for _, s := range specs {
		b.Run(s.name+"/attach", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				g, err := Open(ctx, s.spec, WithoutJournal())
				if err != nil {
					b.Fatal(err)
				}
				cpus, err := g.CPUs(ctx)
				if err == nil {
					_, err = g.ReadAt(make([]byte, 8), int64(cpus[0].PageTableRoot()))
				}
				if err := errors.Join(err, g.Close(ctx)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/attach")
		})
		g, err := Open(ctx, s.spec, WithoutJournal())
		if err != nil {
			b.Fatal(err)
		}
		var total uint64
		for _, r := range g.Ranges() {
			total += r.Size
		}
		b.Run(s.name+"/bulk", func(b *testing.B) {
			buf := make([]byte, 4<<20)
			b.SetBytes(int64(total))
			for i := 0; i < b.N; i++ {
				for _, r := range g.Ranges() {
					for off := uint64(0); off < r.Size; off += uint64(len(buf)) {
						n := min(uint64(len(buf)), r.Size-off)
						if _, err := g.ReadPhys(ctx, buf[:n], r.Start+vmi.PA(off)); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.ReportMetric(float64(total)*float64(b.N)/(1<<20)/b.Elapsed().Seconds(), "MiB/s")
		})
		b.Run(s.name+"/small8", func(b *testing.B) {
			const reads = 10000
			rng := rand.New(rand.NewPCG(1, 2))
			addrs := make([]vmi.PA, reads)
			rs := g.Ranges()
			for i := range addrs {
				r := rs[rng.IntN(len(rs))]
				addrs[i] = r.Start + vmi.PA(rng.Uint64N(r.Size/8)*8)
			}
			var p [8]byte
			start := time.Now()
			for i := 0; i < b.N; i++ {
				for _, a := range addrs {
					if _, err := g.ReadPhys(ctx, p[:], a); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/1000/float64(b.N*reads), "µs/read")
		})
		if err := g.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
