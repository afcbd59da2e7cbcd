// Package qemu attaches vmscope to a running QEMU guest: its process
// (guest memory at memory speed, process_vm_readv), its GDB stub
// (registers, traps, single-step; memory when the process is not known)
// and its monitor, QMP and HMP (run state, memory layout, registers
// without the stub, dumps). A spec (gdb://…, qemu:pid=…) resolves to an
// Endpoint; OpenEndpoint attaches to one. A Guest is a vmi.Live and a vmi.Tracer; writing to
// the guest (vmi.Controller) is package vmi/qemu/control, which only
// system-call injection imports.
//
// Files by concern: gdb.go, rsp.go and target.go are the remote serial
// protocol client (GDB); qmp.go the QMP client; endpoint.go and spec.go
// the specs and what they resolve to; procmem.go the process-memory path,
// layout.go its parsers (info ramblock, info mtree -f, /proc/PID/maps,
// gpa2hva, xp), hmpregs.go the registers from HMP; guest.go opens and
// closes a Guest; run.go is the run state (pause, resume, step, stop events);
// memory.go and regs.go read guest-physical memory and registers;
// trace.go arms traps; journal.go and release.go are the crash record
// and its recovery; dump.go is a consistent dump through QMP.
//
// Invariants:
//   - Reads and traps never write guest memory or registers. Memory
//     packets use guest-physical addresses (Qqemu.PhyMemMode, which the
//     stub keeps after a client leaves: Close and Release turn it off).
//     Traps are the stub's Z packets; under TCG QEMU does not patch guest
//     memory for them.
//   - One control operation at a time: a read of a running guest through
//     the stub stops it for that read (one consistent stop) and lets it
//     run again. A read from the process never stops it.
//   - The process path reads only what the layout proved (every segment
//     placed and sampled against QEMU's xp at attach) and never faults in
//     a hole of a shared backing (SEEK_DATA first).
//   - Close leaves the guest as Open found it: every trap removed,
//     physical mode off, detached, running if it ran (a guest QMP found
//     paused is left paused, never detached, so it never runs between the
//     detach and a QMP stop). Close goes on past errors and takes a
//     context that is not cancelled.
//   - Before its first change to the guest (attaching the stub stops it)
//     Open writes a journal (the run state found, then each trap before it
//     is inserted), atomically, and Close removes it once the guest is
//     restored. A process killed with SIGKILL cannot restore anything:
//     QEMU keeps the guest stopped with its traps armed. Release (vmscope
//     guest release) reads the journal, removes every trap it names, turns
//     physical mode off and resumes the guest only if it ran before
//     vmscope attached. Open refuses a guest whose journal is still there.
//   - Every exchange is bounded: packets by maxPacket, each exchange by
//     opTimeout when the context has no deadline, Close by closeTimeout.
//
// QEMU 7.2's stub, as this package relies on it: attaching stops the
// guest; a client that goes away without a detach leaves it stopped with
// its traps armed until a client detaches; packets are at most 4 KiB;
// a single step runs with interrupts and timers masked; the stub cannot
// list the traps it holds.
package qemu
