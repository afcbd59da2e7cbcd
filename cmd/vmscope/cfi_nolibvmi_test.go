//go:build !libvmi

package main

import (
	"strings"
	"testing"
)

// TestCfiLibVMISpecWithoutTag: a build without the libvmi tag names the
// missing tag for --guest libvmi:DOMAIN (exit 2), and the spec goes only
// with --source vmi.
func TestCfiLibVMISpecWithoutTag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cfi", "learn", "--guest", "libvmi:dom", "--source", "vmi", "--out", t.TempDir() + "/m"}, "built without libvmi"},
		{[]string{"cfi", "learn", "--guest", "libvmi:dom", "--source", "sample", "--out", t.TempDir() + "/m"}, "only with --source vmi"},
		{[]string{"cfi", "learn", "--guest", "gdb://127.0.0.1:1", "--source", "ept", "--out", t.TempDir() + "/m"}, "want sample, step, plugin or vmi"},
	} {
		_, stderr, code := vmscope(t, c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) {
			t.Errorf("vmscope %v: exit %d, stderr %q: want 2 and %q", c.args, code, stderr, c.want)
		}
	}
}
