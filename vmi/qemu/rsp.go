package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// maxPacket bounds a decoded packet payload. QEMU's stub sends at most 4 KiB
// (its MAX_PACKET_LENGTH) plus framing; run-length expansion can grow a
// packet, so the bound is on the decoded size, generous but finite.
const maxPacket = 64 << 10

// ErrProtocol is a malformed exchange with the GDB stub: a bad checksum, an
// over-long packet, an escape or run-length code that breaks the rules, or
// a reply that does not parse.
var ErrProtocol = errors.New("qemu: gdb protocol error")

// appendPacket frames payload as $payload#xx, escaping '$', '#', '}' and '*'
// as the protocol requires ('}' then the byte XOR 0x20).
func appendPacket(dst, payload []byte) []byte {
	dst = append(dst, '$')
	var sum byte
	for _, c := range payload {
		if c == '$' || c == '#' || c == '}' || c == '*' {
			dst = append(dst, '}', c^0x20)
			sum += '}' + (c ^ 0x20)
			continue
		}
		dst = append(dst, c)
		sum += c
	}
	return append(dst, '#', hexDigits[sum>>4], hexDigits[sum&15])
}

const hexDigits = "0123456789abcdef"

// readPacket reads bytes from r until one whole packet, and returns its
// decoded payload. Bytes outside a packet ('+' and '-' acknowledgements,
// noise) are skipped, at most maxPacket of them. The checksum is verified
// even in no-ack mode: a mismatch is ErrProtocol.
func readPacket(r *bufio.Reader) ([]byte, error) {
	for skipped := 0; ; skipped++ {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		if c == '$' {
			break
		}
		if skipped > maxPacket {
			return nil, fmt.Errorf("%w: %d bytes without a packet start", ErrProtocol, skipped)
		}
	}
	var raw []byte
	for {
		chunk, err := r.ReadSlice('#')
		if err == nil {
			raw = append(raw, chunk[:len(chunk)-1]...)
			break
		}
		if err != bufio.ErrBufferFull {
			return nil, noEOF(err)
		}
		raw = append(raw, chunk...)
		if len(raw) > maxPacket {
			return nil, fmt.Errorf("%w: packet longer than %d bytes", ErrProtocol, maxPacket)
		}
	}
	if len(raw) > maxPacket {
		return nil, fmt.Errorf("%w: packet longer than %d bytes", ErrProtocol, maxPacket)
	}
	var ck [2]byte
	if _, err := io.ReadFull(r, ck[:]); err != nil {
		return nil, noEOF(err)
	}
	return decodePayload(raw, ck)
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodePayload checks the checksum of the raw bytes between '$' and '#'
// and undoes escapes and run-length encoding (X*n repeats X n-29 more times).
func decodePayload(raw []byte, ck [2]byte) ([]byte, error) {
	want, ok := unhexByte(ck[0], ck[1])
	if !ok {
		return nil, fmt.Errorf("%w: checksum %q is not hex", ErrProtocol, ck[:])
	}
	var sum byte
	for _, c := range raw {
		sum += c
	}
	if sum != want {
		return nil, fmt.Errorf("%w: checksum %02x, computed %02x", ErrProtocol, want, sum)
	}
	if !bytes.ContainsAny(raw, "}*") {
		return raw, nil
	}
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch c {
		case '}':
			if i+1 >= len(raw) {
				return nil, fmt.Errorf("%w: escape at end of packet", ErrProtocol)
			}
			i++
			out = append(out, raw[i]^0x20)
		case '*':
			if len(out) == 0 || i+1 >= len(raw) {
				return nil, fmt.Errorf("%w: run-length code at offset %d with nothing to repeat", ErrProtocol, i)
			}
			i++
			n := int(raw[i]) - 29
			// GDB never sends the counts that would read as '#' or '$'; any
			// count in 3..97 is accepted here, the rest are rejected.
			if n < 3 || n > 97 {
				return nil, fmt.Errorf("%w: run-length count %q at offset %d", ErrProtocol, raw[i], i)
			}
			if len(out)+n > maxPacket {
				return nil, fmt.Errorf("%w: packet longer than %d bytes once expanded", ErrProtocol, maxPacket)
			}
			last := out[len(out)-1]
			for range n {
				out = append(out, last)
			}
		default:
			out = append(out, c)
		}
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unhexByte(hi, lo byte) (byte, bool) {
	h, ok1 := unhex(hi)
	l, ok2 := unhex(lo)
	return h<<4 | l, ok1 && ok2
}

// decodeHex decodes the hex text s into dst (len(s) == 2*len(dst)).
func decodeHex(dst, s []byte) error {
	if len(s) != 2*len(dst) {
		return fmt.Errorf("%w: %d hex digits for %d bytes", ErrProtocol, len(s), len(dst))
	}
	for i := range dst {
		b, ok := unhexByte(s[2*i], s[2*i+1])
		if !ok {
			return fmt.Errorf("%w: %q is not hex", ErrProtocol, s[2*i:2*i+2])
		}
		dst[i] = b
	}
	return nil
}

// isStopReply reports whether a packet from the stub is a stop reply
// (T, S: stopped; W, X: the target is gone). None of the other replies to
// the packets this client sends begins with these letters.
func isStopReply(p []byte) bool {
	return len(p) >= 3 && (p[0] == 'T' || p[0] == 'S' || p[0] == 'W' || p[0] == 'X') &&
		isHex(p[1]) && isHex(p[2])
}

func isHex(c byte) bool { _, ok := unhex(c); return ok }

// isErrorReply reports whether p is an "Exx" error reply.
func isErrorReply(p []byte) bool {
	return len(p) == 3 && p[0] == 'E' && isHex(p[1]) && isHex(p[2])
}
