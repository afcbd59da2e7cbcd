package sarifschema

import "testing"

// TestSchemaRejects: the validator accepts a minimal log and rejects logs
// that break the 2.1.0 schema, so a test using it can fail.
func TestSchemaRejects(t *testing.T) {
	ok := `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x"}},"results":[{"level":"error","message":{"text":"m"}}]}]}`
	if err := check(t, []byte(ok)); err != nil {
		t.Fatalf("minimal valid log rejected: %v", err)
	}
	for name, bad := range map[string]string{
		"bad level":       `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x"}},"results":[{"level":"fatal","message":{"text":"m"}}]}]}`,
		"no driver name":  `{"version":"2.1.0","runs":[{"tool":{"driver":{}}}]}`,
		"wrong version":   `{"version":"2.0.0","runs":[]}`,
		"no message":      `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x"}},"results":[{"ruleId":"r"}]}]}`,
		"negative length": `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x"}},"results":[{"message":{"text":"m"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"a"},"region":{"byteLength":-1}}}]}]}]}`,
		"bad uri":         `{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x"}},"results":[{"message":{"text":"m"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"p1:/a b\\\\c"}}}]}]}]}`,
	} {
		if err := check(t, []byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
