//go:build !libvmi

package main

import (
	"context"
	"errors"
)

// openLibVMICfi is the libvmi: spec of a build without LibVMI.
func openLibVMICfi(context.Context, string) (*cfiSession, error) {
	return nil, usageError{errors.New("--guest libvmi:DOMAIN: this vmscope was built without libvmi (go build -tags libvmi, with LibVMI installed)")}
}
