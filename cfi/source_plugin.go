package cfi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/vmscope/vmscope/vmerr"
	"github.com/vmscope/vmscope/vmi"
)

// PluginSource reads the page transitions testdata/cfi-plugin's QEMU TCG
// plugin reports on its unix socket (QEMU started with
// -plugin cfi-plugin.so,sock=PATH). The plugin sees every kernel
// translation block execute, so it reports every distinct transition
// between kernel code pages, once per client. It does not stop the guest.
type PluginSource struct {
	Socket string
	// Replay asks the plugin for every transition since QEMU started
	// before the new ones (learning); without it only transitions from
	// now on are reported (each once, even if seen before).
	Replay bool
	// OnReady, when set, is called once the plugin has registered the
	// client: every transition from then on is reported.
	OnReady func()
}

// ErrPluginStream is a message from the plugin that is not one.
var ErrPluginStream = vmerr.New("cfi: invalid plugin message", vmerr.ErrCorrupt)

const (
	pluginMagic  = 0x50494643 // "CFIP"
	pluginMsgLen = 32
	pluginReplay = 0xffffffff
	pluginHello  = 0xfffffffe
)

// Name is "plugin".
func (s *PluginSource) Name() string { return "plugin" }

// Run connects to the plugin and emits its transitions until ctx ends.
func (s *PluginSource) Run(ctx context.Context, emit func(Event) error) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", s.Socket)
	if err != nil {
		return fmt.Errorf("cfi: plugin socket: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	mode := []byte{'N'}
	if s.Replay {
		mode[0] = 'A'
	}
	if _, err := conn.Write(mode); err != nil {
		return fmt.Errorf("cfi: plugin socket: %w", err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	var buf [pluginMsgLen]byte
	for n := int64(0); ; n++ {
		if _, err := io.ReadFull(r, buf[:]); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("cfi: the plugin closed its socket (QEMU quit?): %w", vmi.ErrExited)
			}
			return fmt.Errorf("cfi: plugin socket: %w", err)
		}
		if n == 0 {
			if binary.LittleEndian.Uint32(buf[:]) != pluginMagic || binary.LittleEndian.Uint32(buf[4:]) != pluginHello {
				return vmerr.Corrupt(ErrPluginStream, "plugin hello", 0, "not a hello message (an older plugin?)")
			}
			if s.OnReady != nil {
				s.OnReady()
			}
			continue
		}
		ev, err := decodePluginMsg(buf[:], n*pluginMsgLen)
		if err != nil {
			return err
		}
		if err := emit(ev); err != nil {
			return err
		}
	}
}

// decodePluginMsg checks and decodes one 32-byte message at stream offset
// off.
func decodePluginMsg(b []byte, off int64) (Event, error) {
	magic := binary.LittleEndian.Uint32(b)
	cpu := binary.LittleEndian.Uint32(b[4:])
	from := vmi.VA(binary.LittleEndian.Uint64(b[8:]))
	to := vmi.VA(binary.LittleEndian.Uint64(b[16:]))
	ns := binary.LittleEndian.Uint64(b[24:])
	bad := func(f string, a ...any) (Event, error) {
		return Event{}, vmerr.Corrupt(ErrPluginStream, "plugin message", off, f, a...)
	}
	switch {
	case magic != pluginMagic:
		return bad("magic %#x", magic)
	case to < KernelMin || pageOf(to) != to:
		return bad("page %#x is not a kernel page", uint64(to))
	case from != 0 && (from < KernelMin || pageOf(from) != from):
		return bad("page %#x is not a kernel page", uint64(from))
	case cpu != pluginReplay && cpu >= 4096:
		return bad("vCPU %d", cpu)
	}
	ev := Event{CPU: int(cpu), Page: to, From: from, Addr: to, Time: time.Now()}
	if cpu == pluginReplay {
		ev.CPU, ev.Replay = -1, true
	} else if ns != 0 {
		ev.Time = time.Unix(0, int64(ns))
	}
	return ev, nil
}
