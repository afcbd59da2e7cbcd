package libvirt

import (
	"errors"
	"strings"
	"testing"
)

// liveDomainXML is the <devices> part of a live domain XML as libvirt 9.0
// gives it for the backup tests' domain (virsh dumpxml), trimmed.
const liveDomainXML = `<domain type='qemu' id='3'>
  <name>vmscope-test-1</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/qemu/vmscope-backup-1/data.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <alias name='ide0-1-0'/>
    </disk>
    <serial type='file'><source path='/x/console.log'/><target port='0'/></serial>
  </devices>
</domain>`

func TestParseDisks(t *testing.T) {
	ds, err := parseDisks([]byte(liveDomainXML))
	if err != nil {
		t.Fatal(err)
	}
	want := DiskTarget{Target: "vda", File: "/var/lib/libvirt/qemu/vmscope-backup-1/data.qcow2", Alias: "virtio-disk0", Format: "qcow2"}
	if len(ds) != 1 || ds[0] != want {
		t.Errorf("disks %+v, want [%+v] (the cdrom left out)", ds, want)
	}
	for _, bad := range []string{"", "<domain>", "<domain><devices><disk device='disk'><source file='/a'/></disk></devices></domain>", "<notdomain/>"} {
		if _, err := parseDisks([]byte(bad)); !errors.Is(err, ErrDomainXML) {
			t.Errorf("parseDisks(%q): %v, want ErrDomainXML", bad, err)
		}
	}
	if _, err := parseDisks([]byte("<domain>" + strings.Repeat(" ", maxDomainXML) + "</domain>")); !errors.Is(err, ErrDomainXML) {
		t.Errorf("an oversized XML: %v", err)
	}
}

// FuzzParseDisks: any input gives disks with a target, or ErrDomainXML;
// never a panic.
func FuzzParseDisks(f *testing.F) {
	f.Add([]byte(liveDomainXML))
	f.Add([]byte("<domain><devices><disk><target dev='vda'/></disk></devices></domain>"))
	f.Add([]byte("<domain><devices><disk device='disk'></disk></devices></domain>"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := parseDisks(b)
		if err != nil {
			if !errors.Is(err, ErrDomainXML) {
				t.Fatalf("error %v is not ErrDomainXML", err)
			}
			return
		}
		for _, d := range ds {
			if d.Target == "" {
				t.Fatalf("a disk without a target: %+v", d)
			}
		}
	})
}
