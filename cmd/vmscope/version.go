package main

/*
#include <yara.h>
static const char *vmscope_yara_version(void) { return YR_VERSION; }
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// commit is the VCS commit, set at build time with -ldflags
// "-X main.commit=..." (the Makefile does) for builds where Go records no
// VCS information (a git worktree, -buildvcs=false).
var commit = ""

// yaraVersion is the version of the libyara vmscope was built with.
func yaraVersion() string { return C.GoString(C.vmscope_yara_version()) }

// versionString is what --version prints: the module version (the
// -ldflags version when set), the VCS commit and time the binary was built
// from ("+dirty" for a modified tree), the Go version and libyara's.
func versionString() string {
	v, rev, when, dirty := version, commit, "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = " " + s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("vmscope %s\ncommit %s%s%s\n%s, libyara %s", v, rev, dirty, when, runtime.Version(), yaraVersion())
}
