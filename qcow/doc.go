// Package qcow opens guest disk images for vmscope: raw files and qcow2
// (versions 2 and 3) with backing chains of any depth up to a cap.
//
// What it promises:
//
//   - Read-only. Every file (the image and each backing file) is opened
//     O_RDONLY; no code path writes, truncates or touches metadata.
//   - The format is detected by content, never by file name: "QFI\xfb" with
//     version 2 or 3 is qcow2, other well-known formats (qcow v1, VMDK, VHDX,
//     VDI, VHD, QED, Parallels, LUKS) are refused with [ErrUnsupported], and
//     anything else is raw. A backing file whose format is recorded in the
//     overlay's header ("backing file format" extension) is opened as that
//     format without probing, as QEMU does.
//   - The guest is hostile. Before a qcow2 file reaches go-qcow2reader, this
//     package parses and validates its header, header extensions and whole L1
//     table with bounded reads (every field the library would trust: magic,
//     version, cluster_bits, header_length, size against l1_size, the L1 table
//     inside the file, refcount and snapshot fields, backing name bounds,
//     incompatible features, crypt method, compression type). The library is
//     only handed validated files and a pre-validated backing chain; a panic
//     inside it is still recovered and turned into an error naming the layer.
//     Every error wraps one of [ErrCorrupt], [ErrUnsupported] or [ErrChain]
//     (or an I/O error from the OS) and names the file, the structure and its
//     offset, via [*Error].
//   - [Image] is an io.ReaderAt over the guest (virtual) disk, safe for
//     concurrent use, with io.SectionReader end-of-disk semantics.
//   - [Layer.Allocated] is the set of guest byte ranges a layer holds itself,
//     computed by this package's own L1/L2 walk (not the library), with the
//     semantics of `qemu-img map --output=json` (depth == layer, present):
//     data clusters, compressed clusters and zero-flagged clusters all count
//     as allocated, because a zero cluster in an overlay hides what is below
//     it just as a data cluster does (a guest write of zeros or a discard in
//     an overlay). A raw layer holds its whole size, holes included, as QEMU
//     reports a raw file as present everywhere.
//
// Compressed clusters: zlib (raw deflate, as QEMU writes it) and zstd are
// decoded by klauspost/compress decoders registered with go-qcow2reader; the
// output of one compressed cluster is capped at the largest cluster size.
package qcow
