package main

// NTFS volumes: package ntfs registers its format with fsparse.
import _ "github.com/vmscope/vmscope/fsparse/ntfs"
