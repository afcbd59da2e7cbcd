// Command actor is the guest side of the watch fixture
// (testdata/watch/build.sh): a static program in the initramfs that runs
// the file scenario as several users and logs every action, and an
// inotify logger (the kernel's own fsnotify view).
//
//	actor scenario DIR         run the scenario on the data disk mounted at DIR
//	actor short DIR            a short scenario that changes nothing: opens and
//	                           reads of watched and unwatched files as uids 0,
//	                           1000 and 1001 (the CLI's deny test)
//	actor do UID ACTION PATH [ARG]   one action as user UID (re-executed by scenario)
//	actor inotify DIR...       log inotify events of the directories, one line each
//	actor bench DIR N HZ FILE  the benchmark loop: create N files of 4 KiB in DIR,
//	                           read them, rename them, delete them; meanwhile read
//	                           FILE HZ times a second (HZ 0: never)
//
// Lines on stdout (the serial console):
//
//	ACT pid=P uid=U euid=E comm=actor kind=K path=PATH result=ok|ERRNO [ino=N (create)]
//	INOTIFY mask=0xM path=DIR/NAME
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: actor scenario DIR | do UID ACTION PATH [ARG] | inotify DIR...")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "scenario":
		scenario(os.Args[2])
	case "short":
		short(os.Args[2])
	case "do":
		os.Exit(do(os.Args[2:]))
	case "inotify":
		inotify(os.Args[2:])
	case "bench":
		n, _ := strconv.Atoi(os.Args[3])
		hz, _ := strconv.Atoi(os.Args[4])
		bench(os.Args[2], n, hz, os.Args[5])
	default:
		os.Exit(2)
	}
}

// run runs one action in a child process as uid (gid = uid).
func run(uid int, args ...string) {
	cmd := exec.Command("/bin/actor", append([]string{"do", strconv.Itoa(uid)}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	if err := cmd.Run(); err != nil {
		fmt.Printf("ACTOR-ERROR %v %v\n", args, err)
	}
	// a pause between actions, so that each is its own burst of stops
	time.Sleep(300 * time.Millisecond)
}

func scenario(dir string) {
	w := filepath.Join(dir, "watched")
	b := filepath.Join(dir, "bulk")
	// Accesses to the watched files, as three users.
	run(1000, "openread", filepath.Join(w, "secret.txt"))
	run(1001, "openwrite", filepath.Join(w, "config.txt"))
	run(0, "truncate", filepath.Join(w, "notes.txt"), "5")
	run(1000, "chmod", filepath.Join(w, "notes.txt"), "0640")
	run(0, "rename", filepath.Join(w, "moveme.txt"), filepath.Join(w, "moved.txt"))
	run(1001, "openread", filepath.Join(w, "cold.txt"))
	// Many accesses to unwatched files, as the same users.
	for i := 0; i < 40; i++ {
		p := filepath.Join(b, fmt.Sprintf("f%03d", i))
		uid := []int{0, 1000, 1001}[i%3]
		switch i % 5 {
		case 0:
			run(uid, "openread", p)
		case 1:
			run(uid, "openwrite", p)
		case 2:
			run(uid, "truncate", p, "3")
		case 3:
			run(uid, "chmod", p, "0666")
		case 4:
			run(uid, "rename", p, p+".moved")
		}
	}
	// Unlink a watched file, then create files until its inode slot may be
	// reused, and access them: none of this may be reported for it.
	run(0, "unlink", filepath.Join(w, "victim.txt"))
	for i := 0; i < 60; i++ {
		p := filepath.Join(b, fmt.Sprintf("new%03d", i))
		run(1000, "create", p)
		run(1000, "openread", p)
	}
	// A last watched access: the watch still works after all that.
	run(1000, "openread", filepath.Join(w, "secret.txt"))
}

func short(dir string) {
	w := filepath.Join(dir, "watched")
	b := filepath.Join(dir, "bulk")
	run(1000, "openread", filepath.Join(w, "secret.txt"))
	run(0, "openread", filepath.Join(w, "secret.txt"))
	run(1001, "openread", filepath.Join(w, "config.txt"))
	run(1000, "openread", filepath.Join(b, "f150"))
	run(1001, "openread", filepath.Join(b, "f151"))
	run(1000, "openread", filepath.Join(w, "notes.txt"))
	run(1000, "openread", filepath.Join(w, "secret.txt"))
}

func do(a []string) int {
	uid, _ := strconv.Atoi(a[0])
	_ = uid
	action, path := a[1], a[2]
	arg := ""
	if len(a) > 3 {
		arg = a[3]
	}
	comm, _ := os.ReadFile("/proc/self/comm")
	extra := ""
	logf := func(kind string, err error) {
		res := "ok"
		if err != nil {
			res = "err"
			if en, ok := err.(syscall.Errno); ok {
				res = errnoName(en)
			}
		}
		fmt.Printf("ACT pid=%d uid=%d euid=%d comm=%s kind=%s path=%s result=%s%s\n",
			os.Getpid(), syscall.Getuid(), syscall.Geteuid(), string(trimNL(comm)), kind, path, res, extra)
	}
	buf := make([]byte, 64)
	switch action {
	case "openread":
		fd, err := syscall.Open(path, syscall.O_RDONLY, 0)
		logf("open", err)
		if err != nil {
			return 1
		}
		_, err = syscall.Pread(fd, buf, 0)
		logf("read", err)
		syscall.Close(fd)
	case "openwrite":
		fd, err := syscall.Open(path, syscall.O_WRONLY, 0)
		logf("open", err)
		if err != nil {
			return 1
		}
		_, err = syscall.Pwrite(fd, []byte("written by actor\n"), 0)
		logf("write", err)
		syscall.Close(fd)
	case "create":
		fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o644)
		// the inode number the new file got: a watched file's freed
		// slot may be reused (TestWatchScenario checks that one was)
		var st syscall.Stat_t
		if err == nil && syscall.Fstat(fd, &st) == nil {
			extra = " ino=" + strconv.FormatUint(st.Ino, 10)
		}
		logf("create", err)
		if err == nil {
			syscall.Write(fd, []byte("new file\n"))
			syscall.Close(fd)
		}
	case "truncate":
		n, _ := strconv.ParseInt(arg, 10, 64)
		logf("attr", syscall.Truncate(path, n))
	case "chmod":
		m, _ := strconv.ParseUint(arg, 8, 32)
		logf("attr", syscall.Chmod(path, uint32(m)))
	case "rename":
		logf("rename", syscall.Rename(path, arg))
	case "unlink":
		logf("unlink", syscall.Unlink(path))
	default:
		return 2
	}
	return 0
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	return b
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EACCES:
		return "EACCES"
	case syscall.EPERM:
		return "EPERM"
	case syscall.ENOENT:
		return "ENOENT"
	}
	return "errno" + strconv.Itoa(int(e))
}

func inotify(dirs []string) {
	fd, err := syscall.InotifyInit()
	if err != nil {
		fmt.Println("INOTIFY-ERROR", err)
		return
	}
	names := map[int]string{}
	for _, d := range dirs {
		wd, err := syscall.InotifyAddWatch(fd, d, syscall.IN_ALL_EVENTS)
		if err != nil {
			fmt.Println("INOTIFY-ERROR", d, err)
			continue
		}
		names[wd] = d
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.Read(fd, buf)
		if err != nil || n <= 0 {
			return
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nb := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
			name := string(trimNL(trimZero(nb)))
			fmt.Printf("INOTIFY mask=%#x path=%s/%s\n", ev.Mask, names[int(ev.Wd)], name)
			off += syscall.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

func trimZero(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

func bench(dir string, n, hz int, touch string) {
	os.MkdirAll(dir, 0o755)
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		touches := 0
		if hz > 0 {
			tick := time.NewTicker(time.Second / time.Duration(hz))
			defer tick.Stop()
		loop:
			for {
				select {
				case <-stop:
					break loop
				case <-tick.C:
					if b, err := os.ReadFile(touch); err == nil && len(b) > 0 {
						touches++
					}
				}
			}
		}
		done <- touches
	}()
	start := time.Now()
	data := make([]byte, 4096)
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("b%05d", i)) }
	for i := 0; i < n; i++ {
		if err := os.WriteFile(name(i), data, 0o644); err != nil {
			fmt.Println("BENCH-ERROR", err)
			return
		}
	}
	for i := 0; i < n; i++ {
		os.ReadFile(name(i))
	}
	for i := 0; i < n; i++ {
		os.Rename(name(i), name(i)+".r")
	}
	for i := 0; i < n; i++ {
		os.Remove(name(i) + ".r")
	}
	close(stop)
	fmt.Printf("BENCH files=%d hz=%d touches=%d guest_ms=%d\n", n, hz, <-done, time.Since(start).Milliseconds())
}
