package main

// XFS volumes: fsparse/xfs registers itself with fsparse.
import _ "github.com/vmscope/vmscope/fsparse/xfs"
