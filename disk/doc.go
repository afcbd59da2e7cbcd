// Package disk opens guest disk images for vmscope: the Layer interface
// every image format implements, raw files, detection of a file's format
// by its content through a registry the format packages join, and backing
// chains. Open(path) opens files; New(r, size, opener) reads any
// io.ReaderAt, with an Opener that resolves backing files (the pair
// debug/elf and archive/zip offer). Package qcow registers qcow2, and
// disk/vmdk, disk/vhd and disk/vhdx register "vmdk", "vpc" and "vhdx".
// Import a format package (for its init) wherever images are opened.
//
// What it promises:
//
//   - Read-only. Open opens every file O_RDONLY, and only regular files
//     and block devices (a hostile backing name cannot make it block on a
//     FIFO or read a character device); no code path writes.
//   - Detection by content, never by file name: the first registered
//     format whose Match accepts the first HeadSize bytes; a well-known
//     format that no package registered (qcow2 itself when package qcow is
//     not linked, qcow v1, VMDK, VHDX, VDI, VHD by header or footer, QED,
//     Parallels, ...) is refused with ErrUnsupported, never read as
//     raw (a LUKS file is read raw: it is an encrypted volume, not a
//     container, and fsparse reports it), except that a registered format whose MatchTail accepts the
//     last TailSize bytes (a footer-only format: a fixed VHD, its footer's
//     checksum checked) is taken before a known footer is refused; anything
//     else is raw. A backing file whose format its overlay
//     records is opened as that format without probing (a raw base is
//     read raw whatever its first bytes are), as QEMU does; one recorded
//     as a registered format must carry its header (else ErrCorrupt).
//   - Chains are bounded: at most WithMaxChainDepth layers (default 64),
//     no file twice (by name, and by file identity for Open), backing
//     names resolved as QEMU resolves a plain file name (json: and
//     protocol names refused). A chain error names the overlay and the
//     reference it holds.
//   - A Layer's ReadAt is its guest view (its own data over its chain)
//     with io.SectionReader semantics at Size, safe for concurrent use;
//     Allocated is what the file holds itself, with the semantics of
//     `qemu-img map --output=json` at depth 0. Image reads the top layer,
//     serving reads shorter than a cluster (64 KiB for raw) from a bounded
//     cache of whole clusters (16 MiB), and closes every file once.
//   - Errors: every error wraps ErrCorrupt, ErrUnsupported (which wrap
//     vmerr's roots) or ErrChain, or an OS error, and *Error names the
//     file, the structure and its offset.
//
// Package disk/disktest is the conformance kit: every layer of every
// image a format opens must equal `qemu-img convert -O raw` and its
// allocation `qemu-img map`.
package disk
