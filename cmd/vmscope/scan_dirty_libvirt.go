package main

import (
	"context"
	"fmt"

	"github.com/vmscope/vmscope/dirty/live"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/libvirt"
)

// beginLive takes the point in time of the endpoint's disk: through
// libvirt's checkpoints and pull backup for a libvirt domain, through QMP
// (a fleecing backup job) for a plain QEMU.
func beginLive(ctx context.Context, ep qemu.Endpoint, o live.Options) (*live.View, error) {
	if dom, ok := ep.Monitor.(*libvirt.Domain); ok {
		return live.BeginLibvirt(ctx, dom, o)
	}
	if ep.Monitor == nil {
		return nil, usageError{fmt.Errorf("--guest %s: a live disk needs the QMP socket (,qmp=unix:PATH)", ep.Name)}
	}
	return live.Begin(ctx, ep.Monitor, o)
}

// releaseLiveGuest removes what a killed live poll left in the guest of
// spec: the backup job of a libvirt domain; the vmscope- nodes, jobs,
// exports and NBD server of a plain QEMU, whose orphaned bitmaps it
// merges forward. A spec without a monitor had no live poll.
func releaseLiveGuest(ctx context.Context, spec string) (*live.Released, error) {
	ep, err := resolveGuest(ctx, spec)
	if err != nil {
		return &live.Released{}, err
	}
	defer closeEndpoint(ep)
	var rel *live.Released
	switch m := ep.Monitor.(type) {
	case nil:
		return &live.Released{}, nil
	case *libvirt.Domain:
		rel, err = live.ReleaseLibvirt(ctx, m)
	default:
		rel, err = live.Release(ctx, m, "")
	}
	if rel == nil {
		rel = &live.Released{}
	}
	return rel, err
}
