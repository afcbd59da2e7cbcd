//go:build libvmi

package libvmi

/*
#cgo pkg-config: libvmi
#include <stdlib.h>
#include <libvmi/libvmi.h>
#include <libvmi/events.h>

extern event_response_t goEventCallback(vmi_instance_t vmi, vmi_event_t *event);

static event_response_t event_cb(vmi_instance_t vmi, vmi_event_t *event) {
	return goEventCallback(vmi, event);
}

static vmi_event_t *new_mem_event(addr_t gfn, vmi_mem_access_t access) {
	vmi_event_t *e = calloc(1, sizeof(vmi_event_t));
	if (!e) return NULL;
	e->version = VMI_EVENTS_VERSION;
	e->type = VMI_EVENT_MEMORY;
	e->mem_event.gfn = gfn;
	e->mem_event.in_access = access;
	e->callback = event_cb;
	return e;
}

static vmi_event_t *new_ss_event(uint32_t vcpus) {
	vmi_event_t *e = calloc(1, sizeof(vmi_event_t));
	if (!e) return NULL;
	e->version = VMI_EVENTS_VERSION;
	e->type = VMI_EVENT_SINGLESTEP;
	e->ss_event.vcpus = vcpus;
	e->ss_event.enable = 0;
	e->callback = event_cb;
	return e;
}

static mem_access_event_t *mem_of(vmi_event_t *e) { return &e->mem_event; }
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// ErrLibVMI is a LibVMI call that returned VMI_FAILURE.
var ErrLibVMI = errors.New("libvmi: call failed")

// ErrUnsupported is a request LibVMI cannot carry out as asked.
var ErrUnsupported = vmerr.New("libvmi: not supported", vmerr.ErrUnsupported)

// Instance is an initialised LibVMI instance. Calls are serialised: LibVMI
// instances are not safe for concurrent use.
type Instance struct {
	mu     sync.Mutex
	vmi    C.vmi_instance_t
	paused bool
	maxPA  uint64
	events chan vmi.Stop

	// traps by frame: LibVMI traps accesses a page at a time, and one
	// memory event per frame (its access the union of the traps').
	pages map[vmi.GFN]*pageTraps
	ss    *C.vmi_event_t // the single-step event, once Step registered it
	// stepped is the vCPU whose single step ended (-1 while none).
	stepped int
}

type pageTraps struct {
	ev    *C.vmi_event_t
	traps []vmi.Trap
}

// Open attaches LibVMI to a domain name (Xen, KVM with KVMi) or to a
// memory file (file mode), with events when events is true. It asks LibVMI
// for physical access only (vmi_get_access_mode, then vmi_init without OS
// initialisation): vmscope finds the kernel itself (vmi/linux), so LibVMI
// needs no System.map or offsets profile.
func Open(name string, events bool) (*Instance, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	flags := C.uint64_t(C.VMI_INIT_DOMAINNAME)
	if events {
		flags |= C.VMI_INIT_EVENTS
	}
	var mode C.vmi_mode_t
	if C.vmi_get_access_mode(nil, unsafe.Pointer(cname), flags, nil, &mode) != C.VMI_SUCCESS {
		return nil, fmt.Errorf("%w: vmi_get_access_mode %q: no hypervisor or file by that name", ErrLibVMI, name)
	}
	var v C.vmi_instance_t
	var ierr C.vmi_init_error_t
	if C.vmi_init(&v, mode, unsafe.Pointer(cname), flags, nil, &ierr) != C.VMI_SUCCESS {
		return nil, fmt.Errorf("%w: vmi_init %q (mode %d): init error %d", ErrLibVMI, name, int(mode), int(ierr))
	}
	in := &Instance{vmi: v, maxPA: uint64(C.vmi_get_max_physical_address(v)), events: make(chan vmi.Stop, 256),
		pages: map[vmi.GFN]*pageTraps{}, stepped: -1}
	instances.Store(uintptr(unsafe.Pointer(v)), in)
	return in, nil
}

// Instance is a vmi.Live and a vmi.Tracer.
var (
	_ vmi.Live   = (*Instance)(nil)
	_ vmi.Tracer = (*Instance)(nil)
	_ vmi.RunsOn = (*Instance)(nil)
)

var instances sync.Map // vmi_instance_t -> *Instance, for the callback

// ReadAt reads guest-physical memory (vmi.Memory).
func (in *Instance) ReadAt(p []byte, off int64) (int, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.readAt(p, off)
}

func (in *Instance) readAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n C.size_t
	st := C.vmi_read_pa(in.vmi, C.addr_t(off), C.size_t(len(p)), unsafe.Pointer(&p[0]), &n)
	if st != C.VMI_SUCCESS || int(n) < len(p) {
		return int(n), &vmi.HoleError{Addr: vmi.PA(uint64(off) + uint64(n))}
	}
	return len(p), nil
}

// lockedReader reads guest-physical memory while in.mu is held.
type lockedReader struct{ in *Instance }

func (r lockedReader) ReadAt(p []byte, off int64) (int, error) { return r.in.readAt(p, off) }

// Ranges is one range up to LibVMI's maximum physical address (LibVMI
// does not expose the memory map).
func (in *Instance) Ranges() []vmi.Range { return []vmi.Range{{Start: 0, Size: in.maxPA}} }

// CPUs reads the registers of every vCPU.
func (in *Instance) CPUs(ctx context.Context) ([]vmi.CPU, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := int(C.vmi_get_num_vcpus(in.vmi))
	out := make([]vmi.CPU, 0, n)
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c, err := in.regs(i)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Regs reads the registers of vCPU cpu (vmi.Tracer).
func (in *Instance) Regs(ctx context.Context, cpu int) (vmi.CPU, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return vmi.CPU{}, err
	}
	return in.regs(cpu)
}

func (in *Instance) regs(i int) (vmi.CPU, error) {
	if i < 0 || i >= int(C.vmi_get_num_vcpus(in.vmi)) {
		return vmi.CPU{}, fmt.Errorf("libvmi: no vCPU %d", i)
	}
	c := vmi.CPU{ID: i, HasGPRs: true, HasControl: true, HasEFER: true}
	for _, r := range []struct {
		reg C.reg_t
		f   *uint64
	}{
		{C.RAX, &c.RAX}, {C.RBX, &c.RBX}, {C.RCX, &c.RCX}, {C.RDX, &c.RDX},
		{C.RSI, &c.RSI}, {C.RDI, &c.RDI}, {C.RBP, &c.RBP}, {C.RSP, &c.RSP},
		{C.R8, &c.R8}, {C.R9, &c.R9}, {C.R10, &c.R10}, {C.R11, &c.R11},
		{C.R12, &c.R12}, {C.R13, &c.R13}, {C.R14, &c.R14}, {C.R15, &c.R15},
		{C.RIP, &c.RIP}, {C.RFLAGS, &c.RFLAGS},
		{C.CR0, &c.CR0}, {C.CR2, &c.CR2}, {C.CR3, &c.CR3}, {C.CR4, &c.CR4},
		{C.MSR_EFER, &c.EFER}, {C.FS_BASE, &c.FSBase}, {C.GS_BASE, &c.GSBase},
	} {
		var v C.uint64_t
		if C.vmi_get_vcpureg(in.vmi, &v, r.reg, C.ulong(i)) != C.VMI_SUCCESS {
			return c, fmt.Errorf("%w: vmi_get_vcpureg vCPU %d register %d", ErrLibVMI, i, int(r.reg))
		}
		*r.f = uint64(v)
	}
	return c, nil
}

// Pause stops the guest (vmi_pause_vm); Close resumes it.
func (in *Instance) Pause(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if C.vmi_pause_vm(in.vmi) != C.VMI_SUCCESS {
		return fmt.Errorf("%w: vmi_pause_vm", ErrLibVMI)
	}
	in.paused = true
	return nil
}

// Resume lets the guest run (vmi_resume_vm).
func (in *Instance) Resume(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.paused {
		return nil
	}
	if C.vmi_resume_vm(in.vmi) != C.VMI_SUCCESS {
		return fmt.Errorf("%w: vmi_resume_vm", ErrLibVMI)
	}
	in.paused = false
	return nil
}

func memAccess(a vmi.Access) C.vmi_mem_access_t {
	var m C.vmi_mem_access_t
	if a.Read {
		m |= C.VMI_MEMACCESS_R
	}
	if a.Write {
		m |= C.VMI_MEMACCESS_W
	}
	if a.Execute {
		m |= C.VMI_MEMACCESS_X
	}
	return m
}

func accessOf(m C.vmi_mem_access_t) vmi.Access {
	return vmi.Access{Read: m&C.VMI_MEMACCESS_R != 0, Write: m&C.VMI_MEMACCESS_W != 0, Execute: m&C.VMI_MEMACCESS_X != 0}
}

// frameOf translates a kernel address through vCPU 0's page tables (the
// kernel half every vCPU shares) with vmscope's own walker: LibVMI is
// opened without OS initialisation.
func (in *Instance) frameOf(va vmi.VA) (vmi.GFN, error) {
	c, err := in.regs(0)
	if err != nil {
		return 0, err
	}
	pa, _, err := vmi.Translate(lockedReader{in}, c.PageTableRoot(), va, c.LA57())
	if err != nil {
		return 0, fmt.Errorf("libvmi: trap at %v: %w", va, err)
	}
	return pa.Frame(), nil
}

// setPage (re)registers the memory event of a frame for the union of its
// traps' accesses, or clears it when none is left.
func (in *Instance) setPage(gfn vmi.GFN, traps []vmi.Trap) error {
	if pt := in.pages[gfn]; pt != nil {
		if C.vmi_clear_event(in.vmi, pt.ev, nil) != C.VMI_SUCCESS {
			return fmt.Errorf("%w: vmi_clear_event on frame %#x", ErrLibVMI, uint64(gfn))
		}
		C.free(unsafe.Pointer(pt.ev))
		delete(in.pages, gfn)
	}
	if len(traps) == 0 {
		return nil
	}
	var a vmi.Access
	for _, t := range traps {
		a = a.Union(t.Access)
	}
	e := C.new_mem_event(C.addr_t(gfn), memAccess(a))
	if e == nil {
		return fmt.Errorf("%w: out of memory for an event", ErrLibVMI)
	}
	if C.vmi_register_event(in.vmi, e) != C.VMI_SUCCESS {
		C.free(unsafe.Pointer(e))
		return fmt.Errorf("%w: vmi_register_event on frame %#x", ErrLibVMI, uint64(gfn))
	}
	in.pages[gfn] = &pageTraps{ev: e, traps: traps}
	return nil
}

// Insert arms a trap (vmi.Tracer) as a memory event on the frame that
// holds its kernel address: LibVMI traps a page at a time, so every
// access to the frame stops the vCPU for the callback, which reports
// only the accesses a trap covers. The vCPU is not held: the access is
// emulated when the callback returns and the guest runs on, so a stop
// event is a notification (read registers at once for the state near
// it). An address reached through another mapping of the frame (a user
// alias) is not reported. Besides the traps Validate accepts, it takes a
// page execute trap (vmi.PageExec): every instruction fetched from the
// page is a stop. Needs Open with events.
func (in *Instance) Insert(ctx context.Context, t vmi.Trap) error {
	if err := t.Validate(); err != nil && !t.IsPageExec() {
		return err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	gfn, err := in.frameOf(t.Addr)
	if err != nil {
		return err
	}
	var traps []vmi.Trap
	if pt := in.pages[gfn]; pt != nil {
		for _, x := range pt.traps {
			if x == t {
				return nil
			}
		}
		traps = append(traps, pt.traps...)
	}
	return in.setPage(gfn, append(traps, t))
}

// Remove disarms a trap Insert armed (vmi.Tracer).
func (in *Instance) Remove(ctx context.Context, t vmi.Trap) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	for gfn, pt := range in.pages {
		for i, x := range pt.traps {
			if x == t {
				rest := append(append([]vmi.Trap(nil), pt.traps[:i]...), pt.traps[i+1:]...)
				return in.setPage(gfn, rest)
			}
		}
	}
	return fmt.Errorf("libvmi: remove %v: not set", t)
}

// Step runs vCPU cpu of the paused guest for one instruction (a LibVMI
// single-step event) and pauses it again (vmi.Tracer). Unlike QEMU's stub
// LibVMI cannot hold the other vCPUs: they run for the time of the step.
func (in *Instance) Step(ctx context.Context, cpu int) (vmi.CPU, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if !in.paused {
		return vmi.CPU{}, errors.New("libvmi: step: the guest is running (Pause first)")
	}
	n := int(C.vmi_get_num_vcpus(in.vmi))
	if cpu < 0 || cpu >= n || cpu >= 32 {
		return vmi.CPU{}, fmt.Errorf("%w: step of vCPU %d (of %d; LibVMI's mask has 32)", ErrUnsupported, cpu, n)
	}
	if in.ss == nil {
		e := C.new_ss_event(C.uint32_t(uint64(1)<<n - 1))
		if e == nil {
			return vmi.CPU{}, fmt.Errorf("%w: out of memory for an event", ErrLibVMI)
		}
		if C.vmi_register_event(in.vmi, e) != C.VMI_SUCCESS {
			C.free(unsafe.Pointer(e))
			return vmi.CPU{}, fmt.Errorf("%w: vmi_register_event (single-step)", ErrLibVMI)
		}
		in.ss = e
	}
	if C.vmi_toggle_single_step_vcpu(in.vmi, in.ss, C.uint32_t(cpu), true) != C.VMI_SUCCESS {
		return vmi.CPU{}, fmt.Errorf("%w: vmi_toggle_single_step_vcpu %d", ErrLibVMI, cpu)
	}
	in.stepped = -1
	if C.vmi_resume_vm(in.vmi) != C.VMI_SUCCESS {
		C.vmi_toggle_single_step_vcpu(in.vmi, in.ss, C.uint32_t(cpu), false)
		return vmi.CPU{}, fmt.Errorf("%w: vmi_resume_vm", ErrLibVMI)
	}
	var err error
	for in.stepped != cpu && err == nil {
		if err = ctx.Err(); err == nil && C.vmi_events_listen(in.vmi, 100) != C.VMI_SUCCESS {
			err = fmt.Errorf("%w: vmi_events_listen", ErrLibVMI)
		}
	}
	if in.stepped != cpu {
		C.vmi_toggle_single_step_vcpu(in.vmi, in.ss, C.uint32_t(cpu), false)
	}
	if C.vmi_pause_vm(in.vmi) != C.VMI_SUCCESS {
		return vmi.CPU{}, errors.Join(err, fmt.Errorf("%w: vmi_pause_vm", ErrLibVMI))
	}
	if err != nil {
		return vmi.CPU{}, fmt.Errorf("libvmi: step: %w", err)
	}
	return in.regs(cpu)
}

// TrapsRunOn reports that a trap hit does not hold the vCPU (vmi.RunsOn):
// the access is emulated and the guest runs on.
func (in *Instance) TrapsRunOn() bool { return true }

// Listen waits for events until ctx ends (vmi_events_listen, 100 ms at a
// time); the stops arrive on Events.
func (in *Instance) Listen(ctx context.Context) error {
	for ctx.Err() == nil {
		in.mu.Lock()
		st := C.vmi_events_listen(in.vmi, 100)
		in.mu.Unlock()
		if st != C.VMI_SUCCESS {
			return fmt.Errorf("%w: vmi_events_listen", ErrLibVMI)
		}
	}
	return ctx.Err()
}

// Events is the stream of trap hits (vmi.Tracer); while Listen runs (or
// a Step waits) they arrive here. Full buffers drop events.
func (in *Instance) Events() <-chan vmi.Stop { return in.events }

// Exclusive runs f with the instance's handle (a vmi_instance_t) and no
// other call in flight. It is the seam vmi/libvmi/control writes
// through; this package writes nothing to the guest.
func (in *Instance) Exclusive(f func(handle unsafe.Pointer) error) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return f(unsafe.Pointer(in.vmi))
}

//export goEventCallback
func goEventCallback(v C.vmi_instance_t, e *C.vmi_event_t) C.event_response_t {
	x, ok := instances.Load(uintptr(unsafe.Pointer(v)))
	if !ok {
		return C.VMI_EVENT_RESPONSE_NONE
	}
	in := x.(*Instance) // in.mu is held by the caller of vmi_events_listen
	cpu := int(e.vcpu_id)
	switch e._type {
	case C.VMI_EVENT_SINGLESTEP:
		in.stepped = cpu
		return C.VMI_EVENT_RESPONSE_TOGGLE_SINGLESTEP // off again
	case C.VMI_EVENT_MEMORY:
		mem := C.mem_of(e)
		pt := in.pages[vmi.GFN(mem.gfn)]
		if pt == nil || mem.gla_valid == 0 {
			return C.VMI_EVENT_RESPONSE_EMULATE
		}
		gla, got := vmi.VA(mem.gla), accessOf(mem.out_access)
		for _, t := range pt.traps {
			hit := vmi.Access{Read: got.Read && t.Access.Read, Write: got.Write && t.Access.Write, Execute: got.Execute && t.Access.Execute}
			if !hit.Any() || !t.Covers(gla) {
				continue
			}
			select {
			case in.events <- vmi.Stop{Reason: vmi.StopTrap, CPU: cpu, Access: hit, Addr: gla}:
			default:
			}
			break
		}
		return C.VMI_EVENT_RESPONSE_EMULATE
	}
	return C.VMI_EVENT_RESPONSE_NONE
}

// Close clears every event it registered, resumes the guest if it paused
// it, and destroys the instance.
func (in *Instance) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	var errs []error
	for gfn := range in.pages {
		if err := in.setPage(gfn, nil); err != nil {
			errs = append(errs, err)
		}
	}
	if in.ss != nil {
		if C.vmi_clear_event(in.vmi, in.ss, nil) != C.VMI_SUCCESS {
			errs = append(errs, fmt.Errorf("%w: vmi_clear_event (single-step)", ErrLibVMI))
		}
	}
	if in.paused && C.vmi_resume_vm(in.vmi) != C.VMI_SUCCESS {
		errs = append(errs, fmt.Errorf("%w: vmi_resume_vm", ErrLibVMI))
	}
	instances.Delete(uintptr(unsafe.Pointer(in.vmi)))
	C.vmi_destroy(in.vmi)
	if in.ss != nil {
		C.free(unsafe.Pointer(in.ss))
		in.ss = nil
	}
	return errors.Join(errs...)
}
