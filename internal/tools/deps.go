//go:build tools

package tools

import (
	_ "github.com/diskfs/go-diskfs"
	_ "github.com/dustin/go-humanize"
	_ "github.com/hillu/go-yara/v4"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/spf13/cobra"
)
