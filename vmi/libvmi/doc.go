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
// Without the tag this package is empty. Status: unverified. It has not
// been compiled here (no LibVMI headers on this host) nor run against a
// guest; the C calls follow LibVMI's public header (v0.14).
package libvmi
