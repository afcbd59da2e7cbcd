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
	e->ss_event.enable = 1;
	e->callback = event_cb;
	return e;
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/vmscope/vmscope/vmi"
)

// ErrLibVMI is a LibVMI call that returned VMI_FAILURE.
var ErrLibVMI = errors.New("libvmi: call failed")

// Instance is an initialised LibVMI instance. Calls are serialised: LibVMI
// instances are not safe for concurrent use.
type Instance struct {
	mu     sync.Mutex
	vmi    C.vmi_instance_t
	paused bool
	maxPA  uint64
	events chan Event
	evs    []*C.vmi_event_t
}

// Event is a LibVMI event mapped onto vmscope's stop-event shape.
type Event struct {
	CPU  int
	Kind string // "mem" or "step"
	GFN  uint64
	Addr vmi.VA // the RIP (step) or the accessed guest-linear address (mem)
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
	in := &Instance{vmi: v, maxPA: uint64(C.vmi_get_max_physical_address(v)), events: make(chan Event, 256)}
	instances.Store(uintptr(unsafe.Pointer(v)), in)
	return in, nil
}

var _ vmi.Live = (*Instance)(nil)

var instances sync.Map // vmi_instance_t -> *Instance, for the callback

// ReadAt reads guest-physical memory (vmi.Memory).
func (in *Instance) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	var n C.size_t
	st := C.vmi_read_pa(in.vmi, C.addr_t(off), C.size_t(len(p)), unsafe.Pointer(&p[0]), &n)
	if st != C.VMI_SUCCESS || int(n) < len(p) {
		return int(n), &vmi.HoleError{Addr: vmi.PA(uint64(off) + uint64(n))}
	}
	return len(p), nil
}

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
				return nil, fmt.Errorf("%w: vmi_get_vcpureg vCPU %d register %d", ErrLibVMI, i, int(r.reg))
			}
			*r.f = uint64(v)
		}
		out = append(out, c)
	}
	return out, nil
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
	if C.vmi_resume_vm(in.vmi) != C.VMI_SUCCESS {
		return fmt.Errorf("%w: vmi_resume_vm", ErrLibVMI)
	}
	in.paused = false
	return nil
}

// WatchPage registers a memory access event on guest frame gfn
// (access: "r", "w", "x" or a combination).
func (in *Instance) WatchPage(gfn uint64, access string) error {
	var a C.vmi_mem_access_t
	for _, c := range access {
		switch c {
		case 'r':
			a |= C.VMI_MEMACCESS_R
		case 'w':
			a |= C.VMI_MEMACCESS_W
		case 'x':
			a |= C.VMI_MEMACCESS_X
		}
	}
	return in.register(C.new_mem_event(C.addr_t(gfn), a))
}

// SingleStep registers a single-step event on the vCPUs of the mask.
func (in *Instance) SingleStep(vcpuMask uint32) error {
	return in.register(C.new_ss_event(C.uint32_t(vcpuMask)))
}

func (in *Instance) register(e *C.vmi_event_t) error {
	if e == nil {
		return fmt.Errorf("%w: out of memory for an event", ErrLibVMI)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if C.vmi_register_event(in.vmi, e) != C.VMI_SUCCESS {
		C.free(unsafe.Pointer(e))
		return fmt.Errorf("%w: vmi_register_event", ErrLibVMI)
	}
	in.evs = append(in.evs, e)
	return nil
}

// Listen waits for events until ctx ends (vmi_events_listen, 100 ms at a
// time); they arrive on Events.
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

// Events is the stream of events; full buffers drop events.
func (in *Instance) Events() <-chan Event { return in.events }

//export goEventCallback
func goEventCallback(v C.vmi_instance_t, e *C.vmi_event_t) C.event_response_t {
	x, ok := instances.Load(uintptr(unsafe.Pointer(v)))
	if !ok {
		return C.VMI_EVENT_RESPONSE_NONE
	}
	in := x.(*Instance)
	ev := Event{CPU: int(e.vcpu_id)}
	switch e._type {
	case C.VMI_EVENT_MEMORY:
		mem := (*C.mem_access_event_t)(unsafe.Pointer(&e.anon0[0]))
		ev.Kind, ev.GFN, ev.Addr = "mem", uint64(mem.gfn), vmi.VA(mem.gla)
	case C.VMI_EVENT_SINGLESTEP:
		ev.Kind = "step"
	}
	select {
	case in.events <- ev:
	default:
	}
	return C.VMI_EVENT_RESPONSE_NONE
}

// Close clears every event it registered, resumes the guest if it paused
// it, and destroys the instance.
func (in *Instance) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	var errs []error
	for _, e := range in.evs {
		if C.vmi_clear_event(in.vmi, e, nil) != C.VMI_SUCCESS {
			errs = append(errs, fmt.Errorf("%w: vmi_clear_event", ErrLibVMI))
		}
	}
	if in.paused && C.vmi_resume_vm(in.vmi) != C.VMI_SUCCESS {
		errs = append(errs, fmt.Errorf("%w: vmi_resume_vm", ErrLibVMI))
	}
	instances.Delete(uintptr(unsafe.Pointer(in.vmi)))
	C.vmi_destroy(in.vmi)
	for _, e := range in.evs {
		C.free(unsafe.Pointer(e))
	}
	in.evs = nil
	return errors.Join(errs...)
}
