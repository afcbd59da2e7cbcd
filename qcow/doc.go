// Package qcow reads qcow2 (versions 2 and 3) for vmscope: it registers the
// "qcow2" format with package disk, whose Open and New detect it by content
// and follow its backing chain; a qcow2 file is a *Layer, which implements
// disk.Layer, with its persistent dirty bitmaps.
//
// What it promises:
//
//   - Read-only. It only reads the io.ReaderAt it is handed (disk.Open
//     opens every file O_RDONLY); no code path writes.
//   - The guest is hostile. The header, header extensions, the whole L1
//     table and the bitmap directory are validated at open with bounded
//     reads (magic, version, cluster_bits, header_length, size against
//     l1_size, the L1 table and every L2 table it points to inside the
//     file, refcount and snapshot fields, backing name bounds, incompatible
//     features, crypt method, compression type). Each L2 entry is checked
//     when it is used (cluster aligned, inside the file, subcluster bits
//     consistent). Every length and offset read from the file is bounded
//     before anything is allocated or read; every error wraps one of
//     disk.ErrCorrupt, disk.ErrUnsupported or disk.ErrChain (or an I/O
//     error from the OS) and names the file, the structure and its offset,
//     via *disk.Error.
//   - Reads equal `qemu-img convert -O raw` (the conformance kit
//     disk/disktest checks every fixture). Layer.ReadAt is safe for
//     concurrent use, with io.SectionReader end-of-disk semantics; runs of
//     clusters that follow each other in the file are read with one pread.
//   - Compressed clusters (zlib as QEMU writes it: raw deflate; and zstd)
//     are read with one pread of their exact extent (host offset and
//     sector count of the L2 entry, clipped to the file), inflated to
//     exactly one cluster (never more: the output buffer is the cluster),
//     and kept in a bounded per-layer cache (compCacheBytes) in which each
//     cluster is inflated once by the first reader that needs it, while
//     concurrent readers of the same cluster wait for it: decompression
//     is spread over the readers (the scan's workers) and no cluster is
//     inflated twice while the workers' read-ahead stays inside the cache.
//   - Layer.Allocated is the set of guest byte ranges a layer holds itself,
//     computed by this package's own L1/L2 walk, with the semantics of
//     `qemu-img map --output=json` (depth == layer, present): data
//     clusters, compressed clusters and zero-flagged clusters all count as
//     allocated, because a zero cluster in an overlay hides what is below
//     it just as a data cluster does (a guest write of zeros or a discard
//     in an overlay).
//
// Open, Image, Detect and the Err* sentinels are the disk package's,
// kept here for callers written before package disk.
package qcow
