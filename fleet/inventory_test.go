package fleet

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseInventoryForms(t *testing.T) {
	want := []Image{
		{ID: "a", Path: "/img/a.qcow2", Format: "qcow2", Labels: map[string]string{"team": "x"}},
		{ID: "b", Path: "/rel/b.img"},
	}
	forms := map[string]string{
		"ndjson": "# comment\n{\"id\":\"b\",\"path\":\"b.img\"}\n\n{\"id\":\"a\",\"path\":\"/img/a.qcow2\",\"format\":\"qcow2\",\"labels\":{\"team\":\"x\"}}\n",
		"csv":    "id,path,format,labels\nb,b.img,,\na,/img/a.qcow2,qcow2,team=x\n",
		"paths":  "/img/a.qcow2\nb.img\n",
	}
	for name, text := range forms {
		t.Run(name, func(t *testing.T) {
			inv, err := ParseInventory(strings.NewReader(text), "/rel")
			if err != nil {
				t.Fatal(err)
			}
			if len(inv.Images) != 2 {
				t.Fatalf("images %+v", inv.Images)
			}
			for i, w := range want {
				g := inv.Images[i]
				if name == "paths" {
					w.Format, w.Labels = "", nil
				}
				if g.ID != w.ID || g.Path != w.Path || g.Format != w.Format || len(g.Labels) != len(w.Labels) || g.Labels["team"] != w.Labels["team"] {
					t.Errorf("image %d = %+v, want %+v", i, g, w)
				}
			}
		})
	}
}

func TestInventoryRefuses(t *testing.T) {
	bad := map[string]string{
		"duplicate":     "{\"id\":\"a\",\"path\":\"/x\"}\n{\"id\":\"a\",\"path\":\"/y\"}\n",
		"dup paths":     "/one/vm.img\n/two/vm.qcow2\n",
		"slash":         "{\"id\":\"a/../b\",\"path\":\"/x\"}\n",
		"dotdot":        "{\"id\":\"..\",\"path\":\"/x\"}\n",
		"hidden":        "{\"id\":\".a\",\"path\":\"/x\"}\n",
		"nul":           "{\"id\":\"a\\u0000\",\"path\":\"/x\"}\n",
		"space":         "id,path\na b,/x\n",
		"empty id":      "id,path\n,/x\n",
		"no path":       "{\"id\":\"a\"}\n",
		"unknown field": "{\"id\":\"a\",\"path\":\"/x\",\"pth\":1}\n",
		"bad json":      "{\"id\":\"a\",\n",
		"csv column":    "id,path,colour\na,/x,red\n",
		"csv label":     "id,path,labels\na,/x,novalue\n",
		"long":          "{\"id\":\"" + strings.Repeat("a", 201) + "\",\"path\":\"/x\"}\n",
	}
	for name, text := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := ParseInventory(strings.NewReader(text), "")
			if !errors.Is(err, ErrInventory) {
				t.Fatalf("ParseInventory: %v, want ErrInventory", err)
			}
		})
	}
}

func TestLibvirtInventory(t *testing.T) {
	dir := t.TempDir()
	dom := `<domain type='kvm'>
  <name>web1</name>
  <uuid>6f2c1b84-0000-4000-8000-000000000001</uuid>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web1.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/web1-data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/vg/web1'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>`
	net := `<network><name>default</name></network>`
	os.WriteFile(filepath.Join(dir, "web1.xml"), []byte(dom), 0o644)
	os.WriteFile(filepath.Join(dir, "web2.xml"), []byte(strings.ReplaceAll(dom, "web1", "web2")), 0o644)
	os.WriteFile(filepath.Join(dir, "default.xml"), []byte(net), 0o644)
	inv, err := Libvirt(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids := strings.Join(inv.IDs(), " ")
	if ids != "web1#vda web1#vdb web2#vda web2#vdb" {
		t.Fatalf("ids %q", ids)
	}
	im, _ := inv.Lookup("web2#vdb")
	if im.Path != "/var/lib/libvirt/images/web2-data.img" || im.Format != "raw" || im.Labels["domain"] != "web2" || im.Labels["dev"] != "vdb" {
		t.Errorf("web2#vdb = %+v", im)
	}
	// The same domain twice (a copy of its file) is refused.
	os.WriteFile(filepath.Join(dir, "web1-copy.xml"), []byte(dom), 0o644)
	if _, err := Libvirt(dir); !errors.Is(err, ErrInventory) {
		t.Errorf("a domain defined twice: %v, want ErrInventory", err)
	}
	if _, err := ParseDomain(strings.NewReader("<domain><name>x</name><devices><disk type='file'>")); !errors.Is(err, ErrInventory) {
		t.Errorf("truncated xml: %v", err)
	}
}

func TestGlobInventory(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a.qcow2", "b.img", "c.txt"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	inv, err := Glob(filepath.Join(dir, "*.qcow2"), filepath.Join(dir, "*.img"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(inv.IDs(), " "); got != "a b" {
		t.Errorf("ids %q", got)
	}
	if _, err := Glob(filepath.Join(dir, "*.vmdk")); err == nil {
		t.Error("a pattern matching nothing is not an error")
	}
}

// FuzzParseInventory: any input gives an inventory whose ids are valid,
// unique and sorted, or an error; never a panic.
func FuzzParseInventory(f *testing.F) {
	f.Add("{\"id\":\"a\",\"path\":\"/x\"}\n")
	f.Add("id,path,labels\na,/x,k=v\n")
	f.Add("/a/b.img\n/c/d.qcow2\n")
	f.Add("<domain><name>x</name></domain>")
	f.Fuzz(func(t *testing.T, s string) {
		inv, err := ParseInventory(strings.NewReader(s), "/d")
		if err != nil {
			return
		}
		for i, im := range inv.Images {
			if ValidID(im.ID) != nil || im.Path == "" {
				t.Fatalf("accepted %+v", im)
			}
			if i > 0 && inv.Images[i-1].ID >= im.ID {
				t.Fatalf("not sorted or duplicate: %q %q", inv.Images[i-1].ID, im.ID)
			}
		}
		ParseDomain(strings.NewReader(s))
	})
}
