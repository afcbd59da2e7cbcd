// Command guestboot boots the fixture guest once (testdata/guest/build.sh
// runs it per boot mode), waits for the scenario's READY marker, stops the
// vCPU, saves QEMU's own view of the CPU and page tables (HMP "info
// registers", "gva2gpa" of kernel symbols from the guest's /proc/kallsyms,
// "info mem") and the dump formats QEMU offers, dumps memory (by default
// as ELF and as kdump-zlib; -dumps lists others), and quits QEMU.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmscope/vmscope/vmi/internal/guesttest"
)

// Symbols whose translations QEMU is asked for; those the kernel lacks are skipped.
var gvaSymbols = []string{
	"_text", "_stext", "_etext", "startup_64", "init_task", "linux_banner",
	"init_top_pgt", "swapper_pg_dir", "page_offset_base", "vmemmap_base",
	"phys_base", "__start___ksymtab", "kallsyms_names", "kallsyms_offsets",
	"kallsyms_token_table", "__start_BTF", "__stop_BTF", "sys_call_table", "idt_table",
	"init_mm", "modules", "__per_cpu_start", "jiffies_64", "_end",
}

func main() {
	kernel := flag.String("kernel", "", "vmlinuz")
	initrd := flag.String("initrd", "", "initrd.gz")
	appendArgs := flag.String("append", "", "extra kernel command line")
	out := flag.String("out", "", "output folder")
	mem := flag.Int("mem", 512, "guest memory in MiB")
	cpu := flag.String("cpu", "", "QEMU -cpu model")
	dumps := flag.String("dumps", "guest.elf:elf,guest.kdump:kdump-zlib", "comma-separated FILE:FORMAT dumps of the stopped guest; FILE:FORMAT? only when QEMU offers FORMAT")
	var extra []string
	flag.Func("qemu", "an extra QEMU argument (repeatable)", func(s string) error { extra = append(extra, s); return nil })
	flag.Parse()
	if *kernel == "" || *initrd == "" || *out == "" {
		log.Fatal("guestboot: -kernel, -initrd and -out are required")
	}
	var ds []dump
	for _, d := range strings.Split(*dumps, ",") {
		file, format, ok := strings.Cut(d, ":")
		if !ok {
			log.Fatalf("guestboot: -dumps entry %q is not FILE:FORMAT", d)
		}
		format, optional := strings.CutSuffix(format, "?")
		ds = append(ds, dump{file, format, optional})
	}
	if err := run(*kernel, *initrd, *appendArgs, *out, *mem, *cpu, extra, ds); err != nil {
		log.Fatal(err)
	}
}

type dump struct {
	file, format string
	optional     bool // only when QEMU offers the format (QEMU is built with or without LZO and snappy)
}

func run(kernel, initrd, appendArgs, out string, mem int, cpu string, extra []string, dumps []dump) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var timing strings.Builder
	t0 := time.Now()
	g, err := guesttest.Boot(ctx, guesttest.Config{
		Kernel: kernel, Initrd: initrd, Append: appendArgs, MemMiB: mem, Dir: out, CPU: cpu, Extra: extra,
	})
	if err != nil {
		return err
	}
	defer g.Kill()
	fmt.Fprintf(&timing, "ready %.1f\n", time.Since(t0).Seconds())

	if _, err := g.QMP(ctx, "stop", nil); err != nil {
		return err
	}
	save := func(name, text string) error { return os.WriteFile(filepath.Join(out, name), []byte(text), 0o644) }
	regs, err := g.HMP(ctx, "info registers")
	if err != nil {
		return err
	}
	if err := save("registers.txt", regs); err != nil {
		return err
	}
	cpus, err := g.QMP(ctx, "query-cpus-fast", nil)
	if err != nil {
		return err
	}
	if err := save("cpus.json", string(cpus)+"\n"); err != nil {
		return err
	}
	// QEMU 7.2's "info mem" prints nothing for 5-level paging, slowly.
	var infomem string
	if m := regexp.MustCompile(`CR4=([0-9a-f]+)`).FindStringSubmatch(regs); m != nil {
		if cr4, _ := strconv.ParseUint(m[1], 16, 64); cr4&(1<<12) == 0 {
			if infomem, err = g.HMP(ctx, "info mem"); err != nil {
				return err
			}
		}
	}
	if err := save("infomem.txt", infomem); err != nil {
		return err
	}

	f, err := os.Open(g.Console)
	if err != nil {
		return err
	}
	truth, err := guesttest.ParseConsole(f)
	f.Close()
	if err != nil {
		return err
	}
	var gva strings.Builder
	for _, name := range gvaSymbols {
		va, ok := truth.Symbol(name)
		if !ok {
			continue
		}
		ans, err := g.HMP(ctx, fmt.Sprintf("gva2gpa 0x%x", va))
		if err != nil {
			return err
		}
		ans = strings.TrimSpace(ans)
		gpa := "-"
		if rest, ok := strings.CutPrefix(ans, "gpa: "); ok {
			gpa = rest
		}
		fmt.Fprintf(&gva, "%s 0x%x %s\n", name, va, gpa)
	}
	if err := save("gva2gpa.txt", gva.String()); err != nil {
		return err
	}

	formats, err := g.QMP(ctx, "query-dump-guest-memory-capability", nil)
	if err != nil {
		return err
	}
	if err := save("dump-formats.json", string(formats)+"\n"); err != nil {
		return err
	}
	var offered struct {
		Formats []string `json:"formats"`
	}
	if err := json.Unmarshal(formats, &offered); err != nil {
		return err
	}
	for _, d := range dumps {
		if d.optional && !slices.Contains(offered.Formats, d.format) {
			fmt.Fprintf(&timing, "dump %s not offered\n", d.format)
			continue
		}
		t := time.Now()
		if err := g.Dump(ctx, filepath.Join(out, d.file), d.format); err != nil {
			return err
		}
		fmt.Fprintf(&timing, "dump %s %.1f\n", d.format, time.Since(t).Seconds())
	}
	if err := g.Quit(); err != nil {
		return err
	}
	fmt.Fprintf(&timing, "total %.1f\n", time.Since(t0).Seconds())
	return save("timing.txt", timing.String())
}
