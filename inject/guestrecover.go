package inject

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/linux"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/control"
)

// GuestRecovered is what RecoverEndpoint did: the dummy (Recover) and
// the GDB stub (qemu.Release).
type GuestRecovered struct {
	Inject *Recovered     `json:"inject"`
	Guest  *qemu.Released `json:"guest"`
}

// RecoverGuest is RecoverEndpoint of a guest spec (qemu.Dial).
func RecoverGuest(ctx context.Context, spec, injectJournal, guestJournal string) (*GuestRecovered, error) {
	ep, err := qemu.Dial(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if ep.Close != nil {
			ep.Close()
		}
	}()
	return RecoverEndpoint(ctx, ep, injectJournal, guestJournal)
}

// RecoverEndpoint restores a guest a killed `vmscope inject` left: it
// attaches (the guest stays stopped, as the killed process left it),
// replays the inject journal on the dummy (Recover), detaches leaving it
// stopped, and then releases the stub as the guest journal says
// (qemu.ReleaseEndpoint: the killed process's breakpoints removed, the
// guest resumed if it ran before). guestJournal "" is the default guest
// journal. The caller closes ep.
func RecoverEndpoint(ctx context.Context, ep qemu.Endpoint, injectJournal, guestJournal string) (*GuestRecovered, error) {
	out := &GuestRecovered{Inject: &Recovered{Journal: injectJournal}}
	if _, err := os.Stat(injectJournal); err == nil {
		g, err := qemu.OpenEndpoint(ctx, ep, qemu.WithJournal(injectJournal+".recover"))
		if err != nil {
			return out, fmt.Errorf("inject: recover: attaching: %w", err)
		}
		rec, err := recoverOn(ctx, g, injectJournal)
		out.Inject = rec
		if cerr := g.Close(context.WithoutCancel(ctx)); cerr != nil {
			return out, errors.Join(err, cerr)
		}
		if err != nil {
			return out, err
		}
	}
	var opts []qemu.Option
	if guestJournal != "" {
		opts = append(opts, qemu.WithJournal(guestJournal))
	}
	rel, err := qemu.ReleaseEndpoint(ctx, ep, opts...)
	out.Guest = rel
	return out, err
}

func recoverOn(ctx context.Context, g *qemu.Guest, path string) (*Recovered, error) {
	if err := g.Pause(ctx); err != nil {
		return &Recovered{Journal: path}, err
	}
	cpus, err := g.CPUs(ctx)
	if err != nil {
		return &Recovered{Journal: path}, err
	}
	k, err := linux.Discover(ctx, g, linux.WithCPUs(cpus))
	if err != nil {
		return &Recovered{Journal: path}, err
	}
	return Recover(ctx, g, control.New(g), k, path)
}

// Controller is the register and memory writer of an open QEMU guest
// (vmi/qemu/control), for Run: package inject is the one place of
// vmscope that links it.
func Controller(g *qemu.Guest) vmi.Controller { return control.New(g) }
