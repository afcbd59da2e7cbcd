package main

import (
	"context"

	"github.com/vmscope/vmscope/fsparse"
	"github.com/vmscope/vmscope/scan"
	"github.com/vmscope/vmscope/scan/imagescan"
)

// scanDeleted scans the deleted regular files of d whose content is still
// recoverable (their freed inode maps blocks none of which is in use
// again), each under its path followed by " (deleted)": never a live
// file. Deleted files that cannot be recovered are left out: they have no
// content to scan.
func scanDeleted(ctx context.Context, d *fsparse.Disk, rules *scan.Rules, opts ...scan.Option) (*scan.Result, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	files := make(chan scan.File, 64)
	errc := make(chan []scan.FileError, 1)
	go func() {
		defer close(files)
		var errs []scan.FileError
		for _, v := range d.Volumes {
			if v.Ext4() == nil {
				continue
			}
			s, err := v.ScanDeleted(ctx, ".")
			if err != nil {
				errs = append(errs, scan.FileError{Partition: imagescan.PartitionName(v), FS: v.Type, Path: "/", Err: err})
				continue
			}
			for _, p := range s.Problems {
				errs = append(errs, scan.FileError{Partition: imagescan.PartitionName(v), FS: v.Type, Path: "/", Err: p})
			}
			for _, de := range s.Deleted {
				if de.Realloc || de.Ino == 0 || de.Type != "file" {
					continue
				}
				data, err := v.OpenDeleted(de.Ino)
				if err != nil {
					continue
				}
				f := scan.File{Partition: imagescan.PartitionName(v), FS: v.Type, Path: de.Path + " (deleted)", Ino: de.Ino,
					Size: data.Size(), Mode: de.Mode, Uid: de.Uid, Gid: de.Gid, Data: data}
				select {
				case files <- f:
				case <-ctx.Done():
					errc <- errs
					return
				}
			}
		}
		errc <- errs
	}()
	res, err := scan.Scan(ctx, rules, files, opts...)
	cancel()
	errs := <-errc
	if err != nil {
		return nil, err
	}
	res.Errors = append(res.Errors, errs...)
	res.Summary.Errors = len(res.Errors)
	return res, nil
}
