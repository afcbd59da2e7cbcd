package scan

import (
	"os"
	"strings"
	"testing"
)

// TestHostFalsePositives scans the host's /usr/bin, /usr/lib/x86_64-linux-gnu
// and /etc with the default rules (guest paths = host paths). Hits must be
// in the allow list below, each justified. Opt-in: it depends on the host.
//
//	VMSCOPE_HOST_FP=1 go test ./scan/ -run HostFalsePositives -v
func TestHostFalsePositives(t *testing.T) {
	if os.Getenv("VMSCOPE_HOST_FP") == "" {
		t.Skip("set VMSCOPE_HOST_FP=1 to scan the host")
	}
	justified := map[string]string{}
	r, err := DefaultRules()
	if err != nil {
		t.Fatal(err)
	}
	var files []File
	for _, d := range []string{"/usr/bin", "/usr/lib/x86_64-linux-gnu", "/etc"} {
		if _, err := os.Stat(d); err == nil {
			files = append(files, hostFiles(t, d, true)...)
		}
	}
	res := scanFiles(t, r, files)
	t.Logf("scanned %d files, %d bytes in %s (%d errors, e.g. unreadable)", res.Summary.Files, res.Summary.Bytes, res.Summary.Duration, res.Summary.Errors)
	for _, f := range res.Findings {
		key := f.Path + " " + f.Rule
		if why, ok := justified[key]; ok {
			t.Logf("justified: %s (%s)", key, why)
			continue
		}
		var ss []string
		for _, s := range f.Strings {
			ss = append(ss, s.ID)
		}
		t.Errorf("false positive: %s strings %s", key, strings.Join(ss, ","))
	}
}
