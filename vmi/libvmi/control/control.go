//go:build libvmi

package control

/*
#cgo pkg-config: libvmi
#include <libvmi/libvmi.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/libvmi"
)

// ErrLibVMI is a LibVMI write that returned VMI_FAILURE or wrote less.
var ErrLibVMI = errors.New("libvmi/control: write failed")

// Controller writes to a LibVMI guest.
type Controller struct {
	in *libvmi.Instance
}

var _ vmi.Controller = (*Controller)(nil)

// New is the Controller of an open Instance.
func New(in *libvmi.Instance) *Controller { return &Controller{in: in} }

// WritePhys writes p at guest-physical address pa, which must lie below
// LibVMI's maximum physical address.
func (c *Controller) WritePhys(ctx context.Context, p []byte, pa vmi.PA) error {
	if len(p) == 0 {
		return nil
	}
	end, ok := pa.Add(uint64(len(p)))
	if r := c.in.Ranges(); !ok || len(r) == 0 || end > r[0].End() {
		return fmt.Errorf("libvmi/control: write of %d bytes at %v past guest memory", len(p), pa)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.in.Exclusive(func(h unsafe.Pointer) error {
		var n C.size_t
		st := C.vmi_write_pa(C.vmi_instance_t(h), C.addr_t(pa), C.size_t(len(p)), unsafe.Pointer(&p[0]), &n)
		if st != C.VMI_SUCCESS || int(n) != len(p) {
			return fmt.Errorf("%w: vmi_write_pa %v: %d of %d bytes", ErrLibVMI, pa, int(n), len(p))
		}
		return nil
	})
}

// SetRegs writes the general registers, RIP and RFLAGS of vCPU cpu that
// differ from want; control registers, bases and segments are left alone.
func (c *Controller) SetRegs(ctx context.Context, cpu int, want vmi.CPU) error {
	cur, err := c.in.Regs(ctx, cpu)
	if err != nil {
		return err
	}
	return c.in.Exclusive(func(h unsafe.Pointer) error {
		for _, r := range []struct {
			reg       C.reg_t
			have, set uint64
		}{
			{C.RAX, cur.RAX, want.RAX}, {C.RBX, cur.RBX, want.RBX}, {C.RCX, cur.RCX, want.RCX}, {C.RDX, cur.RDX, want.RDX},
			{C.RSI, cur.RSI, want.RSI}, {C.RDI, cur.RDI, want.RDI}, {C.RBP, cur.RBP, want.RBP}, {C.RSP, cur.RSP, want.RSP},
			{C.R8, cur.R8, want.R8}, {C.R9, cur.R9, want.R9}, {C.R10, cur.R10, want.R10}, {C.R11, cur.R11, want.R11},
			{C.R12, cur.R12, want.R12}, {C.R13, cur.R13, want.R13}, {C.R14, cur.R14, want.R14}, {C.R15, cur.R15, want.R15},
			{C.RIP, cur.RIP, want.RIP}, {C.RFLAGS, cur.RFLAGS, want.RFLAGS},
		} {
			if r.have == r.set {
				continue
			}
			if C.vmi_set_vcpureg(C.vmi_instance_t(h), C.uint64_t(r.set), r.reg, C.ulong(cpu)) != C.VMI_SUCCESS {
				return fmt.Errorf("%w: vmi_set_vcpureg vCPU %d register %d", ErrLibVMI, cpu, int(r.reg))
			}
		}
		return nil
	})
}
