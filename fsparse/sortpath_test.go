package fsparse

import (
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"testing"
)

// TestSortByPath: sortByPath orders a listing exactly as a stable sort by
// path does (entries with equal paths keep their order), on listings
// with many equal paths, already sorted ones and reversed ones.
func TestSortByPath(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for n := range 200 {
		ents := make([]Entry, n)
		for i := range ents {
			ents[i] = Entry{Path: fmt.Sprintf("/d/%d", rng.Intn(n/3+1)), Ino: uint64(i)}
		}
		switch n % 3 {
		case 1:
			sort.SliceStable(ents, func(i, j int) bool { return ents[i].Path < ents[j].Path })
		case 2:
			sort.SliceStable(ents, func(i, j int) bool { return ents[i].Path > ents[j].Path })
		}
		want := make([]Entry, n)
		copy(want, ents)
		sort.SliceStable(want, func(i, j int) bool { return want[i].Path < want[j].Path })
		sortByPath(ents)
		if !reflect.DeepEqual(want, ents) {
			t.Fatalf("%d entries: %v, want %v", n, ents, want)
		}
	}
}
