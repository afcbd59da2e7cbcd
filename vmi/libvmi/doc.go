// Package libvmi is a thin cgo binding to LibVMI (libvmi/libvmi.h,
// libvmi/events.h) offering what vmi/qemu offers for a live QEMU guest:
// guest-physical reads (vmi.Memory), vCPU registers (vmi.CPU),
// pause/resume, and events (memory access on a page, single-step) on a
// stream. LibVMI reaches Xen domains, KVM guests with KVMi, and memory
// files (its file mode).
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
// Without the tag this package is empty. Checked against LibVMI 0.15 in
// file mode on a flat raw dump of the real-guest fixture (libvmi_test.go:
// physical reads equal vmscope's snapshot reader, and vmscope's kernel
// discovery runs on this backend); registers, pause/resume and events need
// a Xen or KVMi host and were not exercised.
package libvmi
