package fsparse_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
)

// sfdiskTable is what sfdisk --json says of a disk.
type sfdiskTable struct {
	PartitionTable struct {
		Label      string `json:"label"`
		ID         string `json:"id"`
		SectorSize int64  `json:"sectorsize"`
		Partitions []struct {
			Node     string `json:"node"`
			Start    int64  `json:"start"`
			Size     int64  `json:"size"`
			Type     string `json:"type"`
			UUID     string `json:"uuid"`
			Name     string `json:"name"`
			Bootable bool   `json:"bootable"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

var nodeIndex = regexp.MustCompile(`(\d+)$`)

// TestPartitionsAgainstSfdisk reads the partition table of every fixture
// image (qcow2 ones through qemu-img convert to raw) and compares it with
// sfdisk --json: the table kind and id, and every partition's Linux number,
// start, size, type, GPT name and GUID, and boot flag. The extended
// partition of an MBR is a container, not a volume: vmscope lists its
// logical partitions, numbered from 5 as Linux does, and not it. An image
// in which sfdisk finds no table has none for vmscope either.
func TestPartitionsAgainstSfdisk(t *testing.T) {
	sfdisk := "sfdisk"
	for _, d := range []string{"", "/sbin/", "/usr/sbin/"} {
		if p, err := exec.LookPath(d + "sfdisk"); err == nil {
			sfdisk = p
			break
		}
	}
	images, _ := filepath.Glob(filepath.Join(fixture.Dir(), "*.img"))
	qcows, _ := filepath.Glob(filepath.Join(fixture.Dir(), "*.qcow2"))
	if len(images) == 0 || !contains(images, "mbr-logical.img") {
		fixture.Missing(t, "testdata/out/mbr-logical.img")
	}
	tables := 0
	for _, img := range append(images, qcows...) {
		name := filepath.Base(img)
		t.Run(name, func(t *testing.T) {
			raw := img
			if strings.HasSuffix(img, ".qcow2") {
				raw = filepath.Join(t.TempDir(), "raw")
				if out, err := exec.Command("qemu-img", "convert", "-O", "raw", img, raw).CombinedOutput(); err != nil {
					t.Fatalf("qemu-img convert: %v\n%s", err, out)
				}
			}
			_, d := openDisk(t, name)
			out, err := exec.Command(sfdisk, "--json", raw).Output()
			if err != nil {
				if d.Table != "none" {
					t.Fatalf("sfdisk finds no table (%v), vmscope a %s table", err, d.Table)
				}
				return
			}
			tables++
			var sf sfdiskTable
			if err := json.Unmarshal(out, &sf); err != nil {
				t.Fatal(err)
			}
			pt := sf.PartitionTable
			kind := map[string]string{"gpt": "gpt", "dos": "mbr"}[pt.Label]
			id := strings.ToLower(strings.TrimPrefix(pt.ID, "0x"))
			if d.Table != kind || d.TableID != id {
				t.Errorf("table %s %s, sfdisk %s %s", d.Table, d.TableID, pt.Label, pt.ID)
			}
			var want, got []string
			for _, p := range pt.Partitions {
				if kind == "mbr" && (p.Type == "5" || p.Type == "f" || p.Type == "85") {
					continue // the extended container
				}
				idx, _ := strconv.Atoi(nodeIndex.FindString(p.Node))
				typ := strings.ToLower(p.Type)
				if kind == "mbr" {
					n, _ := strconv.ParseUint(p.Type, 16, 8)
					typ = fmt.Sprintf("0x%02x", n)
				}
				want = append(want, fmt.Sprintf("%d start=%d size=%d type=%s name=%q guid=%s boot=%v",
					idx, p.Start*pt.SectorSize, p.Size*pt.SectorSize, typ, p.Name, strings.ToLower(p.UUID), p.Bootable))
			}
			for _, p := range d.Partitions {
				got = append(got, fmt.Sprintf("%d start=%d size=%d type=%s name=%q guid=%s boot=%v",
					p.Index, p.Start, p.Size, p.Type, p.Name, p.GUID, p.Bootable))
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("partitions:\n%s\nsfdisk --json:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if name == "mbr-logical.img" && len(got) != 4 {
				t.Errorf("mbr-logical.img: %d partitions, want p1 and logical p5, p6, p7", len(got))
			}
		})
	}
	if tables < 4 {
		t.Errorf("%d fixtures with a partition table, want at least gpt, mbr, mbr-logical and scan", tables)
	}
}

func contains(paths []string, base string) bool {
	for _, p := range paths {
		if filepath.Base(p) == base {
			return true
		}
	}
	return false
}
