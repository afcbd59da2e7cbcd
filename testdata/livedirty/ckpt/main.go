// Command ckpt runs inside the live dirty-poll guest (a static binary in
// its initramfs): it checkpoints the ext4 journal of the filesystem
// mounted at its argument (EXT4_IOC_CHECKPOINT): every committed
// transaction is written home and the journal emptied, so a poll's view
// holds nothing to replay and the dirty bitmap alone says what changed.
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const ext4IocCheckpoint = 0x4004662b // _IOW('f', 43, __u32)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: ckpt MOUNTPOINT")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer f.Close()
	var flags uint32
	if err := unix.IoctlSetPointerInt(int(f.Fd()), ext4IocCheckpoint, int(flags)); err != nil {
		fmt.Fprintln(os.Stderr, "EXT4_IOC_CHECKPOINT:", err)
		os.Exit(1)
	}
}
