// Command threader is the guest fixture's multithreaded process (busybox has
// no threaded applet). It starts N OS threads, names each one "worker-I"
// (prctl PR_SET_NAME, what /proc/PID/task/TID/comm shows) and blocks forever.
// Built static (CGO_ENABLED=0) by testdata/guest/build.sh into the initramfs.
package main

import (
	"os"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// The main goroutine stays on the main thread, so the process keeps its
// comm ("threader") and only the other threads are renamed.
func init() { runtime.LockOSThread() }

func main() {
	n := 4
	if len(os.Args) > 1 {
		if v, err := strconv.Atoi(os.Args[1]); err == nil && v > 0 && v < 64 {
			n = v
		}
	}
	for i := 0; i < n; i++ {
		go func(i int) {
			runtime.LockOSThread()
			name := []byte("worker-" + strconv.Itoa(i) + "\x00")
			syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0)
			for {
				var ts syscall.Timespec
				ts.Sec = 3600
				syscall.Nanosleep(&ts, nil)
			}
		}(i)
	}
	select {}
}
