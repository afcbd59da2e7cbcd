package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestInjectUsage: the inject commands refuse bad arguments with exit 2
// before touching any guest (kill without --allow-write, a relative
// path, an unknown protection level, no --guest).
func TestInjectUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"inject", "kill", "--guest", "gdb://127.0.0.1:1", "42"}, "--allow-write"},
		{[]string{"inject", "ls", "--guest", "gdb://127.0.0.1:1", "etc"}, "not absolute"},
		{[]string{"inject", "stat", "--guest", "gdb://127.0.0.1:1", "--protect", "some", "/etc"}, "want off, before or full"},
		{[]string{"inject", "ps"}, "--guest is required"},
		{[]string{"inject", "cat", "--guest", "gdb://127.0.0.1:1", "--dummy", "x", "/etc/passwd"}, "--dummy"},
		{[]string{"inject", "ps", "--guest", "gdb://127.0.0.1:1", "extra"}, "takes 0 argument"},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), c.args, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q, want 2 and %q", c.args, code, errOut.String(), c.want)
		}
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "inject") {
		t.Errorf("help: %d %q", code, out.String())
	}
}
