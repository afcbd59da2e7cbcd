package vmerr

import (
	"context"
	"encoding/json"
	"errors"
)

var errCanceled = context.Canceled

func marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Exit codes, as scanners use them.
const (
	ExitClean    = 0   // nothing found
	ExitFindings = 1   // findings
	ExitError    = 2   // usage, unreadable input, or a problem met on the way
	ExitCanceled = 130 // interrupted (SIGINT/SIGTERM): 128 + SIGINT, as shells report it
)

// ExitCode maps a command's outcome to the exit status: findings win over
// problems (a finding is never hidden behind another file's read error), a
// cancelled context gives 130, any other error 2.
func ExitCode(err error, findings bool) int {
	switch {
	case errors.Is(err, context.Canceled):
		return ExitCanceled
	case findings:
		return ExitFindings
	case err != nil:
		return ExitError
	}
	return ExitClean
}
