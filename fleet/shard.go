package fleet

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Shard is one of Count shards, Index in [0, Count).
type Shard struct {
	Index, Count int
}

// MaxShards caps the shard count.
const MaxShards = 1 << 16

func (s Shard) String() string { return fmt.Sprintf("%d/%d", s.Index, s.Count) }

// The environment variables auto/N reads, in this order.
var shardEnv = []string{"JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID"}

// ParseShard reads "i/N" or "auto/N"; auto takes i from getenv:
// JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID
// (a Slurm job array). getenv nil is os.Getenv.
func ParseShard(spec string, getenv func(string) string) (Shard, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	is, ns, ok := strings.Cut(spec, "/")
	if !ok {
		return Shard{}, fmt.Errorf("shard %q: want i/N or auto/N", spec)
	}
	n, err := strconv.Atoi(ns)
	if err != nil || n < 1 || n > MaxShards {
		return Shard{}, fmt.Errorf("shard %q: N must be 1 to %d", spec, MaxShards)
	}
	from := ""
	if is == "auto" {
		for _, e := range shardEnv {
			if v := getenv(e); v != "" {
				is, from = v, " (from "+e+")"
				break
			}
		}
		if from == "" {
			return Shard{}, fmt.Errorf("shard %q: neither %s is set", spec, strings.Join(shardEnv, " nor "))
		}
	}
	i, err := strconv.Atoi(is)
	if err != nil || i < 0 || i >= n {
		return Shard{}, fmt.Errorf("shard %q: index %q%s must be 0 to %d", spec, is, from, n-1)
	}
	return Shard{i, n}, nil
}

// score is the rendezvous weight of id on shard j.
func score(id string, j int) uint64 {
	h := sha256.New()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(j))
	h.Write(b[:])
	h.Write([]byte(id))
	var sum [sha256.Size]byte
	return binary.LittleEndian.Uint64(h.Sum(sum[:0]))
}

// Owner is the shard (of n) that takes id: the one with the highest
// rendezvous score (ties to the lower index). Adding or removing another
// id never changes it.
func Owner(id string, n int) int {
	best, bs := 0, uint64(0)
	for j := 0; j < n; j++ {
		if s := score(id, j); j == 0 || s > bs {
			best, bs = j, s
		}
	}
	return best
}

// Balance says how images are spread over shards.
type Balance string

const (
	BalanceHash Balance = "hash" // rendezvous hashing of the id
	BalanceSize Balance = "size" // greedy by allocated bytes, largest first
)

// Plan returns, in id order, the images of inv that shard s takes. With
// BalanceSize, size gives the allocated bytes of an image (Allocated);
// every shard must see the same sizes for the plan to be disjoint.
func Plan(inv *Inventory, s Shard, b Balance, size func(Image) int64) ([]Image, error) {
	if s.Count < 1 || s.Index < 0 || s.Index >= s.Count {
		return nil, fmt.Errorf("shard %v out of range", s)
	}
	var out []Image
	switch b {
	case BalanceHash, "":
		for _, im := range inv.Images {
			if Owner(im.ID, s.Count) == s.Index {
				out = append(out, im)
			}
		}
	case BalanceSize:
		if size == nil {
			size = Allocated
		}
		type sized struct {
			im Image
			n  int64
		}
		all := make([]sized, len(inv.Images))
		for i, im := range inv.Images {
			all[i] = sized{im, size(im)}
		}
		sort.SliceStable(all, func(i, j int) bool { return all[i].n > all[j].n }) // ids already sorted
		load := make([]int64, s.Count)
		for _, x := range all {
			k := 0
			for j := range load {
				if load[j] < load[k] {
					k = j
				}
			}
			load[k] += x.n
			if k == s.Index {
				out = append(out, x.im)
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	default:
		return nil, fmt.Errorf("balance %q: want hash or size", b)
	}
	return out, nil
}

// Allocated is the bytes the image file holds on its filesystem (st_blocks,
// not its apparent size); 0 when it cannot be read.
func Allocated(im Image) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(im.Path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
