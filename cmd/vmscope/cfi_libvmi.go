//go:build libvmi

package main

import (
	"context"
	"errors"

	"github.com/vmscope/vmscope/cfi"
	"github.com/vmscope/vmscope/vmi/libvmi"
	"github.com/vmscope/vmscope/vmi/linux"
)

// openLibVMICfi attaches LibVMI (with events) to the domain name, finds
// its kernel and code regions, and builds the vmi source on it.
func openLibVMICfi(ctx context.Context, name string) (*cfiSession, error) {
	if name == "" {
		return nil, usageError{errors.New("--guest libvmi:DOMAIN: the domain name is empty")}
	}
	in, err := libvmi.Open(name, true)
	if err != nil {
		return nil, err
	}
	s := &cfiSession{closer: func(context.Context) error { return in.Close() }}
	fail := func(err error) (*cfiSession, error) { return nil, errors.Join(err, in.Close()) }
	cpus, err := in.CPUs(ctx)
	if err != nil {
		return fail(err)
	}
	if s.kernel, err = linux.Discover(ctx, in, linux.WithCPUs(cpus)); err != nil {
		return fail(err)
	}
	if s.regions, err = cfi.LoadRegions(ctx, s.kernel); err != nil {
		return fail(err)
	}
	s.source = &cfi.VMISource{Tracer: in, Regions: s.regions}
	return s, nil
}
