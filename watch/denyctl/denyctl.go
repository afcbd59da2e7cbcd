// Package denyctl gives `vmscope watch --mode deny` the one write it
// needs: deny mode sets RAX to -EACCES when a forbidden task's
// inode_permission returns (watch.Deny). Package watch itself stays
// read-only (it takes a vmi.Controller and links no implementation);
// this package is the one place of the watch feature that links
// vmi/qemu/control, so cmd/vmscope's dependency test can allow exactly it.
package denyctl

import (
	"github.com/vmscope/vmscope/vmi"
	"github.com/vmscope/vmscope/vmi/qemu"
	"github.com/vmscope/vmscope/vmi/qemu/control"
)

// Controller is the register writer of an open guest, for watch.Deny.
func Controller(g *qemu.Guest) vmi.Controller { return control.New(g) }
