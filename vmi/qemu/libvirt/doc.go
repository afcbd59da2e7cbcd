// Package libvirt reaches a running libvirt domain by name: the guest
// spec libvirt:DOMAIN[?uri=qemu:///system] resolves to a qemu.Endpoint
// through go-libvirt (libvirt's RPC protocol in pure Go, no libvirt
// client library):
//
//   - Monitor: QMP commands and HMP command lines through libvirt's monitor
//     pass-through (virDomainQemuMonitorCommand, what `virsh
//     qemu-monitor-command` does). HMP lines go as QMP
//     human-monitor-command, what libvirt itself sends for the HMP flag,
//     so a QEMU error keeps its class (*qemu.QMPError).
//   - PID: the domain's QEMU, from libvirt's runtime directory
//     (/run/libvirt/qemu/DOMAIN.pid), checked against the process's
//     command line (-name guest=DOMAIN).
//   - OpenGDB: a GDB stub opened on demand on a free loopback port (HMP
//     "gdbserver tcp:127.0.0.1:PORT") and closed again by its closer (HMP
//     "gdbserver none"): the existing stub path (qemu.Open of
//     gdb://127.0.0.1:PORT) then works on the domain.
//   - Close: disconnects from libvirt.
//
// Domain (the Monitor's concrete type) adds DumpGuestMemory, Messages,
// and checkpoints and pull-mode backups for dirty polls
// (CreateCheckpoint, BeginPullBackup, BackupJob, AbortJob).
//
// # Taint
//
// libvirt marks a domain whose monitor was used behind its back. The first
// pass-through command taints the domain "custom-monitor", for as long as
// its QEMU runs: virDomainGetMessages (`virsh dominfo`, "Messages:") then
// lists "tainted: custom monitor control commands issued", and the domain
// log (/var/log/libvirt/qemu/DOMAIN.log) and libvirtd's log get "Domain
// id=N is tainted: custom-monitor". Nothing else changes: libvirt keeps
// managing the domain. Dial itself sends no monitor command; the taint
// comes with the first Execute, HMP or OpenGDB (TestDomain checks both
// records and that there is none before).
//
// # What libvirt does not take well
//
//   - QMP dump-guest-memory through the pass-through crashes libvirtd 9.0
//     (Debian 12): its DUMP_COMPLETED handler dereferences the job of a
//     dump libvirt did not start (segfault in libvirt_driver_qemu.so).
//     Execute refuses it (ErrRefused); Domain.DumpGuestMemory asks
//     libvirt for the dump (virDomainCoreDumpWithFormat,
//     VIR_DUMP_MEMORY_ONLY).
//   - A stub stop is a pause libvirt sees (the domain turns "paused"
//     while the stub holds the guest, and "running" after the detach).
//   - QEMU has one gdbserver: OpenGDB replaces one the domain's XML
//     started, and its closer closes it.
//   - go-libvirt takes no context: a call whose context ends returns the
//     context's error at once, and libvirt's late answer is dropped.
//
// Only the local system instance is supported (qemu:///system, or
// qemu+unix:///system?socket=PATH): the process path and the PID check
// need the domain's QEMU on this host. A domain name holding '?' cannot
// be written as a spec.
//
// Tests run against a real libvirtd started without systemd by
// testdata/libvirt/libvirt.sh and transient type='qemu' domains booted
// from the guest fixture (package libvirttest).
package libvirt
