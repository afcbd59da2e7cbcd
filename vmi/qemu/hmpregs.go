package qemu

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmscope/vmscope/vmi"
)

// maxHMPCPUs bounds the vCPUs of one "info registers -a" answer.
const maxHMPCPUs = 4096

// hmpCPUs reads the registers of every vCPU from HMP "info registers -a":
// no GDB stub, and the guest keeps running (each vCPU's registers are
// those of its last exit to QEMU; pause for a consistent view).
func hmpCPUs(ctx context.Context, mon Monitor) ([]vmi.CPU, error) {
	s, err := mon.HMP(ctx, "info registers -a")
	if err != nil {
		return nil, err
	}
	return parseHMPRegisters(s)
}

// parseHMPRegisters parses HMP "info registers" (x86-64), one "CPU#N"
// block per vCPU, in vCPU order:
//
//	CPU#0
//	RAX=0000000000000000 RBX=ffff895c41f1b000 RCX=... RDX=...
//	...
//	RIP=ffffffffaadf30e7 RFL=00000087 [--S--PC] CPL=0 II=0 A20=1 SMM=0 HLT=0
//	CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]
//	GDT=     fffffe0000001000 0000007f
//	CR0=80050033 CR2=0000000002055a88 CR3=0000000101e3e000 CR4=000006b0
//	EFER=0000000000000d01
//
// HMP does not show the kernel GS base (HasKernelGSBase stays false).
func parseHMPRegisters(s string) ([]vmi.CPU, error) {
	if len(s) > maxLayoutText {
		return nil, fmt.Errorf("%w: info registers: %d bytes", ErrMonitor, len(s))
	}
	var cpus []vmi.CPU
	var c *vmi.CPU
	seen := map[string]bool{}
	finish := func() error {
		if c == nil {
			return nil
		}
		for _, r := range []string{"RIP", "RSP", "CR0", "CR3", "CR4", "EFER", "CS"} {
			if !seen[r] {
				return fmt.Errorf("%w: info registers: CPU#%d has no %s", ErrMonitor, c.ID, r)
			}
		}
		c.FSBase, c.GSBase = c.FS.Base, c.GS.Base
		c.HasGPRs, c.HasControl, c.HasEFER = true, true, true
		cpus = append(cpus, *c)
		return nil
	}
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimRight(l, "\r ")
		if rest, ok := strings.CutPrefix(l, "CPU#"); ok {
			if err := finish(); err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(strings.TrimSpace(rest))
			if err != nil || n != len(cpus) || n >= maxHMPCPUs {
				return nil, fmt.Errorf("%w: info registers: %q after %d vCPUs", ErrMonitor, l, len(cpus))
			}
			c, seen = &vmi.CPU{ID: n}, map[string]bool{}
			continue
		}
		if c == nil || len(l) < 4 {
			continue
		}
		name := strings.TrimSpace(l[:3])
		if l[3] == '=' && name != "" {
			if seg := hmpSegment(c, name); seg != nil {
				f := strings.Fields(l[4:])
				ok := false
				switch {
				case name == "GDT" || name == "IDT":
					if len(f) >= 2 {
						base, ok1 := hexField(f[0])
						lim, ok2 := hexField(f[1])
						seg.Base, seg.Limit, ok = base, uint32(lim), ok1 && ok2
					}
				case len(f) >= 4:
					sel, ok1 := hexField(f[0])
					base, ok2 := hexField(f[1])
					lim, ok3 := hexField(f[2])
					fl, ok4 := hexField(f[3])
					ok = ok1 && ok2 && ok3 && ok4
					*seg = vmi.Segment{Selector: uint16(sel), Base: base, Limit: uint32(lim), Flags: uint32(fl)}
				}
				if !ok {
					return nil, fmt.Errorf("%w: info registers: %q", ErrMonitor, l)
				}
				seen[name] = true
				continue
			}
		}
		// NAME=HEX pairs; "R8 =..." has a space before '='
		l = strings.ReplaceAll(l, " =", "=")
		for _, w := range strings.Fields(l) {
			k, v, ok := strings.Cut(w, "=")
			if !ok {
				continue
			}
			f := hmpField(c, k)
			if f == nil {
				continue
			}
			x, ok := hexField(v)
			if !ok {
				return nil, fmt.Errorf("%w: info registers: %s=%q", ErrMonitor, k, v)
			}
			*f = x
			seen[k] = true
		}
	}
	if err := finish(); err != nil {
		return nil, err
	}
	if len(cpus) == 0 {
		return nil, fmt.Errorf("%w: info registers: no CPU#", ErrMonitor)
	}
	return cpus, nil
}

func hexField(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 16 {
		return 0, false
	}
	x, err := strconv.ParseUint(s, 16, 64)
	return x, err == nil
}

func hmpSegment(c *vmi.CPU, name string) *vmi.Segment {
	switch name {
	case "ES":
		return &c.ES
	case "CS":
		return &c.CS
	case "SS":
		return &c.SS
	case "DS":
		return &c.DS
	case "FS":
		return &c.FS
	case "GS":
		return &c.GS
	case "LDT":
		return &c.LDT
	case "TR":
		return &c.TR
	case "GDT":
		return &c.GDT
	case "IDT":
		return &c.IDT
	}
	return nil
}

func hmpField(c *vmi.CPU, name string) *uint64 {
	switch name {
	case "RFL":
		return &c.RFLAGS
	case "EFER":
		return &c.EFER
	case "CR0", "CR2", "CR3", "CR4":
		return regField(c, strings.ToLower(name))
	}
	if len(name) >= 2 && name[0] == 'R' {
		return regField(c, strings.ToLower(name))
	}
	return nil
}
