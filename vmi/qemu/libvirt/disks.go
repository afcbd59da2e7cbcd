package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmscope/vmscope/vmerr"
)

// What a dirty poll of a domain needs besides checkpoints and backups:
// the domain's disks (target, source file, device alias) and the names of
// its checkpoints.

// ErrDomainXML: the domain's XML is not what libvirt gives for a domain.
var ErrDomainXML = vmerr.New("libvirt: domain xml", vmerr.ErrCorrupt)

// maxDomainXML bounds a live domain description.
const maxDomainXML = 16 << 20

// DiskTarget is a disk of the domain as its live XML says.
type DiskTarget struct {
	Target string // "vda"
	File   string // the source file ("" for a network or block source)
	Alias  string // the device alias ("virtio-disk0"): QEMU's device id
	Format string // the driver type ("qcow2", "raw")
}

// Disks lists the domain's disks (device='disk') from its live XML
// (virDomainGetXMLDesc).
func (d *Domain) Disks(ctx context.Context) ([]DiskTarget, error) {
	x, err := call(ctx, func() (string, error) { return d.c.l.DomainGetXMLDesc(d.dom, 0) })
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %q: dumpxml: %w", d.name, err)
	}
	return parseDisks([]byte(x))
}

func parseDisks(b []byte) ([]DiskTarget, error) {
	if len(b) > maxDomainXML {
		return nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrDomainXML, len(b), maxDomainXML)
	}
	var x struct {
		XMLName xml.Name `xml:"domain"`
		Disks   []struct {
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source struct {
				File string `xml:"file,attr"`
			} `xml:"source"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Alias struct {
				Name string `xml:"name,attr"`
			} `xml:"alias"`
		} `xml:"devices>disk"`
	}
	if err := xml.Unmarshal(b, &x); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDomainXML, err)
	}
	var out []DiskTarget
	for _, dk := range x.Disks {
		if dk.Device != "" && dk.Device != "disk" {
			continue
		}
		if dk.Target.Dev == "" {
			return nil, fmt.Errorf("%w: a disk without a target", ErrDomainXML)
		}
		out = append(out, DiskTarget{Target: dk.Target.Dev, File: dk.Source.File, Alias: dk.Alias.Name, Format: dk.Driver.Type})
	}
	return out, nil
}

// Checkpoints lists the names of the domain's checkpoints
// (virDomainListAllCheckpoints).
func (d *Domain) Checkpoints(ctx context.Context) ([]string, error) {
	cps, err := call(ctx, func() ([]golibvirt.DomainCheckpoint, error) {
		cps, _, err := d.c.l.DomainListAllCheckpoints(d.dom, 1<<16, 0)
		return cps, err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt: domain %q: checkpoint-list: %w", d.name, err)
	}
	names := make([]string, len(cps))
	for i, c := range cps {
		names[i] = c.Name
	}
	return names, nil
}
