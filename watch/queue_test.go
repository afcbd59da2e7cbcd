package watch

import (
	"testing"
	"time"
)

// TestQueueDropsAndCounts: events that do not fit the bounded queue are
// dropped and counted, never blocking the tracer; an access with no VFS
// entry is reported as kind access, and --events filters by kind.
func TestQueueDropsAndCounts(t *testing.T) {
	x := &Watcher{out: make(chan Event, 2)}
	g := &group{started: time.Now(), paths: map[string]*pathAcc{}}
	for _, p := range []string{"/a", "/b", "/c", "/d", "/e"} {
		g.paths[p] = &pathAcc{fields: map[string]bool{"i_mode": true}, stops: 1}
	}
	x.emit(g)
	if st := x.Stats(); st.Events != 5 || st.Dropped != 3 || st.Access != 5 {
		t.Errorf("stats %+v, want 5 events, 3 dropped, 5 of kind access", st)
	}
	if ev := <-x.out; ev.Kind != "access" || ev.Path != "/a" {
		t.Errorf("first event %+v", ev)
	}
	y := &Watcher{out: make(chan Event, 8), opts: Options{Kinds: map[string]bool{"read": true}}}
	y.emit(g)
	g.kind = "read"
	y.emit(g)
	if st := y.Stats(); st.Events != 5 || len(y.out) != 5 {
		t.Errorf("with --events read: %+v, %d queued, want the 5 reads only", st, len(y.out))
	}
}
