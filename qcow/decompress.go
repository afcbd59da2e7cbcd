package qcow

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// inflate decodes one compressed cluster: in is its exact compressed
// extent, the output is exactly cs bytes (QEMU demands a whole cluster
// too). Compression type 0 is zlib (raw deflate, as QEMU writes it), 1 is
// zstd (one frame). The output is capped at cs whatever the input claims;
// the padding QEMU leaves after the stream in the last sector is ignored,
// as QEMU's own decoders ignore it.
func inflate(typ uint8, in []byte, cs int) ([]byte, error) {
	switch typ {
	case 0:
		return inflateDeflate(in, cs)
	case 1:
		return inflateZstd(in, cs)
	}
	return nil, errors.New("unknown compression type") // refused by parseHeader
}

var flatePool sync.Pool

func inflateDeflate(in []byte, cs int) ([]byte, error) {
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
	out := make([]byte, cs)
	if n, err := io.ReadFull(fr, out); err != nil {
		return nil, fmt.Errorf("deflate stream gives %d of %d bytes: %w", n, cs, err)
	}
	return out, nil
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

// inflateZstd decodes the one zstd frame a compressed cluster starts with.
// The frame is delimited by walking its block headers, so the padding that
// follows it in the last sector is never fed to the decoder (QEMU's own
// decoder stops at the end of the frame too).
func inflateZstd(in []byte, cs int) ([]byte, error) {
	n, err := zstdFrameLen(in)
	if err != nil {
		return nil, err
	}
	var h zstd.Header
	if err := h.Decode(in); err == nil && h.HasFCS && h.FrameContentSize != uint64(cs) {
		return nil, fmt.Errorf("zstd frame of %d bytes, want %d", h.FrameContentSize, cs)
	}
	out, err := zstdDec.DecodeAll(in[:n], make([]byte, 0, cs))
	if err != nil {
		return nil, err
	}
	if len(out) != cs {
		return nil, fmt.Errorf("zstd frame decodes to %d bytes, want %d", len(out), cs)
	}
	return out, nil
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
