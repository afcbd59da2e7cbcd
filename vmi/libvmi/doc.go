// Package libvmi is a thin cgo binding to LibVMI (libvmi/libvmi.h,
// libvmi/events.h) offering what vmi/qemu offers for a live QEMU guest, as
// far as LibVMI can: guest-physical reads (vmi.Memory), vCPU registers
// (vmi.CPU), pause/resume (vmi.Live), and tracing (vmi.Tracer): traps by
// kernel address and length, single-step, and typed stop events. Writes
// (vmi.Controller) are package vmi/libvmi/control. LibVMI reaches Xen
// domains, KVM guests with KVMi, and memory files (its file mode).
//
// Where LibVMI differs from QEMU's stub, as vmi.Tracer users meet it:
//   - traps are memory-access events on the frame that holds the address
//     (translated through vCPU 0's page tables by vmscope's own walker), so
//     every access to that frame costs a trip to the callback, which
//     reports only the accesses a trap covers; the access is emulated and
//     the vCPU runs on, so a stop is a notification, not a held vCPU;
//   - events arrive only while Listen (or a Step) waits on LibVMI: run
//     Listen in a goroutine while tracing (vmi.Trace reports the hits and,
//     the Instance being a vmi.RunsOn, does not step past them);
//   - a step lets the other vCPUs run for its time.
//
// It is built only with the build tag libvmi, because LibVMI is not
// packaged by Debian: build LibVMI from https://github.com/libvmi/libvmi
// (cmake; installs libvmi.pc), then
//
//	go build -tags libvmi ./...
//
// LibVMI installs libvmi/events.h only when a hypervisor driver (Xen or
// KVM) is built; this package needs it. Open asks LibVMI for physical
// access only (no OS initialisation): vmscope finds the kernel itself, so
// LibVMI needs no System.map or offsets profile.
//
// Without the tag this package is empty, and the tag needs LibVMI's
// headers and libvmi.pc: it does not build without them. Checked against
// LibVMI 0.15 in file mode on a flat raw dump of the real-guest fixture
// (libvmi_test.go: physical reads equal vmscope's snapshot reader, and
// vmscope's kernel discovery runs on this backend). The tracer and the
// controller compile against LibVMI's current headers (events.h of the
// master branch); registers, pause/resume, events and writes need a Xen
// or KVMi host and were not exercised.
package libvmi
