// Package scan runs YARA rules over guest files streamed from a disk image.
//
// Input is a channel of [File]: a guest path plus an [io.ReaderAt] and a
// size, as produced by the filesystem readers. The package never depends on
// them and never buffers a whole file: each file is fed to libyara through a
// memory-block iterator ([yara.MemoryBlockIterator]) that reads it in
// fixed-size, overlapping blocks, so memory per worker is bounded by the
// block size whatever the file size.
//
// Promises:
//
//   - Rules are compiled once ([LoadRules], [LoadRulesCached], [DefaultRules])
//     or loaded compiled (yarac output, or the compiled-rules cache); every
//     worker has its own *yara.Scanner over them. Compile errors are
//     [*RulesError] (file and line) and match [ErrRules].
//   - Every scanned file gets the external variables filename, filepath,
//     extension, filetype, owner (and md5, always "", so Loki-style rule sets
//     compile), with LOKI/THOR's values; see [Externals].
//   - Blocks of a file overlap by at least [MinOverlap] bytes (default 64 KiB),
//     more than the longest match libyara can produce for a regular
//     expression or hex string (YR_RE_SCAN_LIMIT = 4096), so a string
//     straddling a block boundary is found; libyara keeps one match per
//     absolute offset, so the overlap does not double matches. The remaining
//     differences from a whole-file scan are listed in [Scan]'s doc.
//   - The sha256 of a file (WithHash, and always for a matched file) is
//     computed from the same reads that feed YARA.
//   - A file that cannot be read is a [FileError]; the scan goes on.
//   - Results are sorted (partition, path, namespace, rule), so reports are
//     deterministic whatever the number of workers.
//   - Scan stops when its context is cancelled, also in the middle of a file.
//
// The package logs nothing; progress is exposed through [Progress].
package scan
