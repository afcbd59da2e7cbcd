package cow

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"testing"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/internal/rangeset"
	"github.com/vmscope/vmscope/qcow"
)

type mapEntry struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Depth   int   `json:"depth"`
	Present bool  `json:"present"`
}

// qemuMap is the reference: the ranges qemu-img map finds in a layer
// shallower than since.
func qemuMap(t *testing.T, img string, since int) rangeset.Set {
	t.Helper()
	out, err := exec.Command(fixture.Tool(t, "qemu-img"), "map", "--output=json", img).Output()
	if err != nil {
		t.Fatalf("qemu-img map: %v", err)
	}
	var es []mapEntry
	if err := json.Unmarshal(out, &es); err != nil {
		t.Fatal(err)
	}
	var s rangeset.Set
	for _, e := range es {
		if e.Present && e.Depth < since {
			s.Add(e.Start, e.Start+e.Length)
		}
	}
	return s
}

func TestDirtyVsQemuImgMap(t *testing.T) {
	for _, name := range []string{"chain-top.qcow2", "chain-mid.qcow2", "overlay-raw.qcow2", "scan-overlay.qcow2"} {
		t.Run(name, func(t *testing.T) {
			path := fixture.Path(t, name)
			im, err := qcow.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			for since := 1; since < len(im.Layers()); since++ {
				got, err := Dirty(context.Background(), im, since)
				if err != nil {
					t.Fatal(err)
				}
				want := qemuMap(t, path, since)
				if !rangeset.Equal(got, want) {
					t.Errorf("since %d: Dirty = %v, qemu-img map = %v", since, got, want)
				}
				if got.Empty() {
					t.Errorf("since %d: empty", since)
				}
			}
		})
	}
}

func TestSingleFile(t *testing.T) {
	im, err := qcow.Open(fixture.Path(t, "ext4.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if _, err := Dirty(context.Background(), im, 1); !errors.Is(err, ErrNoOverlay) {
		t.Fatalf("err = %v, want ErrNoOverlay", err)
	}
}

func TestBetween(t *testing.T) {
	top, err := qcow.Open(fixture.Path(t, "chain-top.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	base, err := qcow.Open(fixture.Path(t, "chain-base.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	got, ok, err := Between(context.Background(), base, top)
	if err != nil || !ok {
		t.Fatalf("Between: ok=%v err=%v", ok, err)
	}
	want := qemuMap(t, top.Layers()[0].Name(), 2)
	if !rangeset.Equal(got, want) {
		t.Errorf("Between = %v, want %v", got, want)
	}
}
