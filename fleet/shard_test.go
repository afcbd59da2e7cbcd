package fleet

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestParseShard(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	good := []struct {
		spec string
		env  map[string]string
		want Shard
	}{
		{"0/1", nil, Shard{0, 1}},
		{"3/7", nil, Shard{3, 7}},
		{"auto/7", map[string]string{"JOB_COMPLETION_INDEX": "6"}, Shard{6, 7}},
		{"auto/7", map[string]string{"SLURM_ARRAY_TASK_ID": "2"}, Shard{2, 7}},
		{"auto/7", map[string]string{"JOB_COMPLETION_INDEX": "1", "SLURM_ARRAY_TASK_ID": "2"}, Shard{1, 7}},
	}
	for _, g := range good {
		s, err := ParseShard(g.spec, env(g.env))
		if err != nil || s != g.want {
			t.Errorf("ParseShard(%q, %v) = %v, %v; want %v", g.spec, g.env, s, err, g.want)
		}
	}
	for _, b := range []string{"", "1", "7/7", "-1/3", "a/3", "0/0", "auto/7", "1/x", "0/70000"} {
		if s, err := ParseShard(b, env(map[string]string{"SLURM_ARRAY_TASK_ID": "9"})); err == nil {
			t.Errorf("ParseShard(%q) = %v, want an error", b, s)
		}
	}
}

func ids(prefix string, n int) []Image {
	out := make([]Image, n)
	for i := range out {
		out[i] = Image{ID: fmt.Sprintf("%s%d", prefix, i), Path: "/x"}
	}
	return out
}

// checkSharding asserts the sharding properties on images over n shards:
// each id in exactly one shard's plan (disjoint, union = inventory), and
// adding one id moves only it.
func checkSharding(t *testing.T, images []Image, extra Image, n int) {
	t.Helper()
	inv, err := NewInventory(images)
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]int{}
	for i := 0; i < n; i++ {
		p, err := Plan(inv, Shard{i, n}, BalanceHash, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range p {
			if j, dup := owner[im.ID]; dup {
				t.Fatalf("%q in shards %d and %d", im.ID, j, i)
			}
			owner[im.ID] = i
		}
	}
	if len(owner) != len(inv.Images) {
		t.Fatalf("%d ids planned, inventory has %d", len(owner), len(inv.Images))
	}
	inv2, err := NewInventory(append(images[:len(images):len(images)], extra))
	if err != nil {
		return // the extra id is a duplicate or unsafe
	}
	for i := 0; i < n; i++ {
		p, _ := Plan(inv2, Shard{i, n}, BalanceHash, nil)
		for _, im := range p {
			if im.ID != extra.ID && owner[im.ID] != i {
				t.Fatalf("adding %q moved %q from shard %d to %d", extra.ID, im.ID, owner[im.ID], i)
			}
		}
	}
}

// FuzzSharding: for any set of ids and shard count, shards are disjoint,
// their union is the inventory and adding an id moves only it.
func FuzzSharding(f *testing.F) {
	f.Add(uint64(1), uint8(16), uint16(200), "vm-")
	f.Add(uint64(7), uint8(1), uint16(3), "x")
	f.Add(uint64(9), uint8(7), uint16(24), "img#vda")
	f.Fuzz(func(t *testing.T, seed uint64, n uint8, count uint16, prefix string) {
		if n == 0 || count > 2000 {
			return
		}
		r := rand.New(rand.NewPCG(seed, 0))
		images := ids(prefix, int(count))
		if _, err := NewInventory(images); err != nil {
			return // the prefix makes the ids unsafe: NewInventory's refusal, tested in TestInventoryRefuses
		}
		r.Shuffle(len(images), func(i, j int) { images[i], images[j] = images[j], images[i] })
		checkSharding(t, images, Image{ID: fmt.Sprintf("%snew%d", prefix, r.Uint32()), Path: "/y"}, int(n))
	})
}

// TestShardBalance: 10,000 ids on 16 shards, the largest at most 1.15
// times the mean, for several id families.
func TestShardBalance(t *testing.T) {
	for _, prefix := range []string{"vm-", "web#vda-", "i-0a1b2c3d", ""} {
		inv, err := NewInventory(ids(prefix+"n", 10000))
		if err != nil {
			t.Fatal(err)
		}
		largest := 0
		for i := 0; i < 16; i++ {
			p, _ := Plan(inv, Shard{i, 16}, BalanceHash, nil)
			largest = max(largest, len(p))
		}
		if mean := 10000.0 / 16; float64(largest) > 1.15*mean {
			t.Errorf("prefix %q: largest shard %d > 1.15 × mean %.0f", prefix, largest, mean)
		}
	}
}

// TestBalanceSize: greedy by size gives every shard a near-equal load on a
// skewed fleet, disjoint and complete.
func TestBalanceSize(t *testing.T) {
	images := ids("vm", 40)
	size := func(im Image) int64 {
		var n int
		fmt.Sscanf(im.ID, "vm%d", &n)
		if n < 4 {
			return 100 << 30 // four huge images
		}
		return int64(n) << 20
	}
	inv, _ := NewInventory(images)
	seen := map[string]bool{}
	var loads []int64
	for i := 0; i < 4; i++ {
		p, err := Plan(inv, Shard{i, 4}, BalanceSize, size)
		if err != nil {
			t.Fatal(err)
		}
		var l int64
		for _, im := range p {
			if seen[im.ID] {
				t.Fatalf("%s twice", im.ID)
			}
			seen[im.ID] = true
			l += size(im)
		}
		loads = append(loads, l)
	}
	if len(seen) != 40 {
		t.Fatalf("%d of 40 planned", len(seen))
	}
	lo, hi := loads[0], loads[0]
	for _, l := range loads {
		lo, hi = min(lo, l), max(hi, l)
	}
	if float64(hi) > 1.01*float64(lo) {
		t.Errorf("loads %v: spread over 1%%", loads)
	}
}
