package qcow

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
	qcow2 "github.com/lima-vm/go-qcow2reader/image/qcow2"
	qlog "github.com/lima-vm/go-qcow2reader/log"
)

func init() {
	// A library logs nothing: what the library would warn about (dirty,
	// corrupt, extended L2) is reported in Layer fields instead.
	qlog.SetWarnFunc(nil)
	// go-qcow2reader registers compress/flate for zlib and nothing for zstd.
	// Both are replaced by decoders that read one compressed cluster as a
	// whole, bound the output, and tolerate the padding QEMU leaves after
	// the stream in the last sector, as QEMU's own decoders do.
	qcow2.SetDecompressor(qcow2.CompressionTypeZlib, inflateCluster)
	qcow2.SetDecompressor(qcow2.CompressionTypeZstd, unzstdCluster)
}

// maxCompressedInput bounds the compressed bytes of one cluster: a cluster
// plus the largest count of additional sectors a descriptor can hold.
const maxCompressedInput = maxClusterSize + 512<<(maxClusterBits-8)

var bufPool = sync.Pool{New: func() any { b := make([]byte, maxClusterSize); return &b }}

// readCompressed reads the compressed input of one cluster. The library
// hands an io.SectionReader that may run past the end of the file for the
// last cluster; a short read is fine.
func readCompressed(r io.Reader) ([]byte, error) {
	in, err := io.ReadAll(io.LimitReader(r, maxCompressedInput))
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	return in, nil
}

var flatePool sync.Pool

func inflateCluster(r io.Reader) (io.ReadCloser, error) {
	in, err := readCompressed(r)
	if err != nil {
		return nil, err
	}
	var fr io.ReadCloser
	if v := flatePool.Get(); v != nil {
		fr = v.(io.ReadCloser)
		if err := fr.(flate.Resetter).Reset(bytes.NewReader(in), nil); err != nil {
			return nil, err
		}
	} else {
		fr = flate.NewReader(bytes.NewReader(in))
	}
	defer flatePool.Put(fr)
	return decodeCluster(fr)
}

// zstdDec decodes whole frames with DecodeAll, which is safe for
// concurrent use on one decoder.
var zstdDec = func() *zstd.Decoder {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxWindow(8<<20),
		zstd.WithDecoderMaxMemory(maxClusterSize*2))
	if err != nil {
		panic(err) // only with invalid options
	}
	return d
}()

// unzstdCluster decodes the one zstd frame a compressed cluster starts with.
// The frame is delimited by walking its block headers, so the padding that
// follows it in the last sector is never fed to the decoder (QEMU's own
// decoder stops at the end of the frame too).
func unzstdCluster(r io.Reader) (io.ReadCloser, error) {
	in, err := readCompressed(r)
	if err != nil {
		return nil, err
	}
	n, err := zstdFrameLen(in)
	if err != nil {
		return nil, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	out, err := zstdDec.DecodeAll(in[:n], (*bp)[:0])
	if err != nil {
		return nil, err
	}
	if len(out) > maxClusterSize {
		return nil, errors.New("zstd cluster decodes to more than the largest cluster")
	}
	return io.NopCloser(bytes.NewReader(append([]byte(nil), out...))), nil
}

// zstdFrameLen returns the length of the zstd frame at the start of in.
func zstdFrameLen(in []byte) (int, error) {
	var h zstd.Header
	if err := h.Decode(in); err != nil {
		return 0, err
	}
	if h.Skippable {
		return 0, errors.New("zstd: skippable frame in a compressed cluster")
	}
	off := h.HeaderSize
	for blocks := 0; ; blocks++ {
		if blocks > maxClusterSize { // each block holds at least one byte
			return 0, errors.New("zstd: too many blocks")
		}
		if len(in)-off < 3 {
			return 0, io.ErrUnexpectedEOF
		}
		bh := uint32(in[off]) | uint32(in[off+1])<<8 | uint32(in[off+2])<<16
		off += 3
		last := bh&1 != 0
		size := int(bh >> 3)
		switch (bh >> 1) & 3 {
		case 1: // RLE: one byte
			size = 1
		case 3:
			return 0, errors.New("zstd: reserved block type")
		}
		if len(in)-off < size {
			return 0, io.ErrUnexpectedEOF
		}
		off += size
		if last {
			break
		}
	}
	if h.HasCheckSum {
		off += 4
		if off > len(in) {
			return 0, io.ErrUnexpectedEOF
		}
	}
	return off, nil
}

// decodeCluster decodes at most one largest cluster. A stream error after a
// whole cluster (a power of two of at least 512 bytes) came out is the
// padding after the stream, which QEMU ignores too.
func decodeCluster(src io.Reader) (io.ReadCloser, error) {
	bp := bufPool.Get().(*[]byte)
	out := *bp
	n, err := io.ReadFull(src, out)
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
	case n >= 512 && n&(n-1) == 0:
	default:
		bufPool.Put(bp)
		return nil, err
	}
	data := make([]byte, n)
	copy(data, out[:n])
	bufPool.Put(bp)
	return io.NopCloser(bytes.NewReader(data)), nil
}
