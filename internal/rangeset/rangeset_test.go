package rangeset

import (
	"math/rand"
	"testing"
)

// bitmap is the obvious reference: one bool per byte.
type bitmap []bool

func (b bitmap) set(s, e int64) {
	for i := s; i < e; i++ {
		b[i] = true
	}
}

func (b bitmap) toSet() Set {
	var out Set
	for i := 0; i < len(b); {
		if !b[i] {
			i++
			continue
		}
		j := i
		for j < len(b) && b[j] {
			j++
		}
		out.r = append(out.r, Range{int64(i), int64(j)})
		i = j
	}
	return out
}

func checkInvariants(t *testing.T, s Set) {
	t.Helper()
	for i, r := range s.r {
		if r.Start >= r.End {
			t.Fatalf("empty range %v in %v", r, s)
		}
		if i > 0 && s.r[i-1].End >= r.Start {
			t.Fatalf("ranges %v and %v touch or overlap in %v", s.r[i-1], r, s)
		}
	}
}

func randomSet(rng *rand.Rand, n int) (Set, bitmap) {
	bm := make(bitmap, n)
	var s Set
	for k := 0; k < rng.Intn(12); k++ {
		a := int64(rng.Intn(n))
		b := a + int64(rng.Intn(n/4+1))
		if b > int64(n) {
			b = int64(n)
		}
		s.Add(a, b)
		bm.set(a, b)
	}
	return s, bm
}

func TestAgainstBitmap(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	const n = 200
	for iter := 0; iter < 3000; iter++ {
		a, abm := randomSet(rng, n)
		b, bbm := randomSet(rng, n)
		checkInvariants(t, a)
		if !Equal(a, abm.toSet()) {
			t.Fatalf("Add: got %v want %v", a, abm.toSet())
		}
		union, inter, sub := make(bitmap, n), make(bitmap, n), make(bitmap, n)
		for i := 0; i < n; i++ {
			union[i] = abm[i] || bbm[i]
			inter[i] = abm[i] && bbm[i]
			sub[i] = abm[i] && !bbm[i]
		}
		for name, pair := range map[string][2]Set{
			"union":     {Union(a, b), union.toSet()},
			"intersect": {Intersect(a, b), inter.toSet()},
			"subtract":  {Subtract(a, b), sub.toSet()},
		} {
			checkInvariants(t, pair[0])
			if !Equal(pair[0], pair[1]) {
				t.Fatalf("%s(%v, %v) = %v, want %v", name, a, b, pair[0], pair[1])
			}
		}
		lo := int64(rng.Intn(n))
		hi := lo + int64(rng.Intn(20))
		want := false
		for i := lo; i < hi && i < n; i++ {
			want = want || abm[i]
		}
		if got := a.Overlaps(lo, hi); got != want {
			t.Fatalf("%v.Overlaps(%d,%d) = %v, want %v", a, lo, hi, got, want)
		}
		var cnt int64
		for _, v := range abm {
			if v {
				cnt++
			}
		}
		if a.Bytes() != cnt {
			t.Fatalf("Bytes = %d, want %d", a.Bytes(), cnt)
		}
	}
}
