package cfi

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// The plain workload boot (no rootkit, no exec log) that learnedModel,
// TestStepWindows and TestVMISourceRefusedByQEMUStub share: booted on
// first use, paused (QMP stop) whenever no test holds it, so that its
// workload takes no CPU from the other tests' boots, and quit by TestMain.
// Each of those tests reads the plugin in its 'N' mode (every edge from
// the client's start on), so what ran before does not change what it
// sees.
var plain struct {
	sync.Mutex
	booted bool
	g      *testGuest
	dir    string
	err    error
}

// plainGuest returns the shared plain boot, running, for the test; it is
// paused again when the test ends.
func plainGuest(t *testing.T) *testGuest {
	t.Helper()
	kernel, initrd, plugin := cfiFixture(t)
	plain.Lock()
	defer plain.Unlock()
	if !plain.booted {
		plain.booted = true
		if plain.dir, plain.err = os.MkdirTemp("", "cfi-plain"); plain.err == nil {
			plain.g, plain.err = startGuest(kernel, initrd, plugin, plain.dir, "")
		}
	}
	if plain.err != nil {
		t.Fatal(plain.err)
	}
	g := plain.g
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Ref.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := g.Ref.Stop(ctx); err != nil {
			t.Errorf("pause the shared guest: %v", err)
		}
	})
	return g
}

func TestMain(m *testing.M) {
	code := m.Run()
	if plain.g != nil {
		plain.g.quit()
	}
	if plain.dir != "" {
		os.RemoveAll(plain.dir)
	}
	os.Exit(code)
}
