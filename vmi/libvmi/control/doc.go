// Package control is the write side of a LibVMI guest: it implements
// vmi.Controller (guest-physical memory with vmi_write_pa, the general
// registers with vmi_set_vcpureg) over a libvmi.Instance. Like
// vmi/qemu/control it is a package of its own so that what links it can
// be checked: only system-call injection (package inject) may import it
// (cmd/vmscope's dependency test).
//
// It is built only with the build tag libvmi (see vmi/libvmi); without the
// tag this package is empty. It compiles against LibVMI's headers; it was
// not run (writes need a Xen or KVMi host).
package control
