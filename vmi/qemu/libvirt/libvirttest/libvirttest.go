// Package libvirttest gives tests a real libvirt domain: Debian's libvirtd,
// started without systemd by testdata/libvirt/libvirt.sh (in a private
// mount namespace that hides the unusable /dev/kvm), and a transient
// type='qemu' domain (virDomainCreateXML) that boots the real-guest
// fixture's kernel and initramfs (testdata/guest/build.sh) to its READY
// marker. The domain is destroyed when the test ends.
//
// Start skips a test when libvirt, the guest fixture or a usable daemon
// is missing, and fails it under CI=true (internal/fixture).
package libvirttest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/vmscope/vmscope/internal/fixture"
	"github.com/vmscope/vmscope/vmi/internal/guesttest"
)

// Config says how to boot a domain.
type Config struct {
	MemMiB  int    // guest memory; 512 when zero
	Append  string // extra kernel command line
	Devices string // extra <devices> XML, e.g. a <disk>
	// Kernel and Initrd boot other files than the guest fixture's
	// (copied into the domain's folder, where libvirt's QEMU reads them).
	Kernel, Initrd string
}

// Domain is a running transient libvirt domain booted from the guest
// fixture.
type Domain struct {
	Name    string
	Dir     string // where its console log is; libvirt-qemu may write here
	Console string // the serial console log (its last part: ConsoleText)
	// Create is how long virDomainCreateXML took (QEMU started, the guest
	// not yet booted); Ready how long from the create to the READY marker.
	Create, Ready time.Duration

	l *golibvirt.Libvirt
	d golibvirt.Domain
}

var (
	daemonOnce sync.Once
	daemonErr  error
	imageDir   string
	seq        atomic.Int64
)

// RootDir is where domains keep their files: readable and writable by
// libvirt's QEMU user (root's home and /tmp's private folders are not).
const RootDir = "/var/lib/libvirt/qemu"

// Daemon starts libvirtd as testdata/libvirt/libvirt.sh does (or reuses
// the one it started), once per test binary, and copies the guest
// fixture's kernel and initramfs where libvirt's QEMU may read them. It
// returns that folder, or skips/fails.
func Daemon(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		fixture.Missing(t, "-short: the libvirt tests boot a guest")
	}
	for _, tool := range []string{"libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "unshare", "nsenter"} {
		fixture.Tool(t, tool)
	}
	fixture.GuestPath(t, "vmlinuz")
	fixture.GuestPath(t, "initrd.gz")
	if u, err := user.Current(); err != nil || u.Uid != "0" {
		fixture.Missing(t, "the libvirt fixture runs as root (it starts libvirtd)")
	}
	daemonOnce.Do(func() {
		script := filepath.Join(fixture.Root(), "testdata", "libvirt", "libvirt.sh")
		run := func(arg string) (string, error) {
			var out, errb bytes.Buffer
			cmd := exec.Command("bash", script, arg)
			cmd.Env = append(os.Environ(), "VMSCOPE_GUEST="+fixture.GuestDir())
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Run(); err != nil {
				return "", fmt.Errorf("libvirt.sh %s: %v: %s", arg, err, strings.TrimSpace(errb.String()))
			}
			return strings.TrimSpace(out.String()), nil
		}
		if _, daemonErr = run("daemon"); daemonErr == nil {
			imageDir, daemonErr = run("images")
		}
	})
	if daemonErr != nil {
		fixture.Missing(t, "%v", daemonErr)
	}
	return imageDir
}

// Connect opens a go-libvirt connection to the system instance, closed
// when the test ends.
func Connect(t testing.TB) *golibvirt.Libvirt {
	t.Helper()
	l := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithLocalTimeout(10 * time.Second)))
	if err := l.ConnectToURI(golibvirt.QEMUSystem); err != nil {
		t.Fatalf("libvirt: connect: %v", err)
	}
	t.Cleanup(func() { l.Disconnect() })
	return l
}

// XML is the domain XML of a transient type='qemu' domain booting kernel
// and initrd with its serial console to console: no graphics (QEMU's
// -display none; <graphics type='none'/> is invalid), no network, no USB
// controller, no balloon.
func XML(name, kernel, initrd, console string, cfg Config) string {
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 512
	}
	esc := func(s string) string {
		var b bytes.Buffer
		for _, r := range s {
			switch r {
			case '<':
				b.WriteString("&lt;")
			case '>':
				b.WriteString("&gt;")
			case '&':
				b.WriteString("&amp;")
			case '\'':
				b.WriteString("&apos;")
			case '"':
				b.WriteString("&quot;")
			default:
				b.WriteRune(r)
			}
		}
		return b.String()
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
%s
  </devices>
</domain>
`, esc(name), cfg.MemMiB, esc(kernel), esc(initrd), esc(strings.TrimSpace("console=ttyS0 quiet panic=-1 "+cfg.Append)), esc(console), cfg.Devices)
}

// Start boots a transient domain from the guest fixture and waits (up to
// 5 minutes) for its READY marker; the domain is destroyed and its folder
// removed when the test ends.
func Start(t testing.TB, cfg Config) *Domain {
	t.Helper()
	img := Daemon(t)
	name := fmt.Sprintf("vmscope-test-%d-%d", os.Getpid(), seq.Add(1))
	dir := filepath.Join(RootDir, "vmscope-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if u, err := user.Lookup("libvirt-qemu"); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(dir, uid, gid)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &Domain{Name: name, Dir: dir, Console: filepath.Join(dir, "console.log"), l: Connect(t)}
	kernel, initrd := filepath.Join(img, "vmlinuz"), filepath.Join(img, "initrd.gz")
	if cfg.Kernel != "" {
		kernel, initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.gz")
		for src, dst := range map[string]string{cfg.Kernel: kernel, cfg.Initrd: initrd} {
			if b, err := os.ReadFile(src); err != nil {
				t.Fatal(err)
			} else if err := os.WriteFile(dst, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	xml := XML(name, kernel, initrd, d.Console, cfg)
	t0 := time.Now()
	dom, err := d.l.DomainCreateXML(xml, 0)
	if err != nil {
		t.Fatalf("libvirt: create %s: %v", name, err)
	}
	d.Create = time.Since(t0)
	d.d = dom
	t.Cleanup(func() { d.Destroy() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := d.waitReady(ctx); err != nil {
		t.Fatal(err)
	}
	d.Ready = time.Since(t0)
	t.Logf("domain %s: create %v, READY after %v", name, d.Create.Round(time.Millisecond), d.Ready.Round(time.Millisecond))
	return d
}

func (d *Domain) waitReady(ctx context.Context) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(d.Console)
		if bytes.Contains(b, []byte(guesttest.ReadyMarker)) {
			return nil
		}
		if st, _, err := d.l.DomainGetState(d.d, 0); err != nil || st != int32(golibvirt.DomainRunning) {
			return fmt.Errorf("libvirt: domain %s left running (state %d, %v) before READY; console:\n%s", d.Name, st, err, tail(b))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("libvirt: domain %s: no READY in its console: %w\n%s", d.Name, ctx.Err(), tail(b))
		case <-tick.C:
		}
	}
}

func tail(b []byte) string {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// maxRotations bounds the rotated console files read: virtlogd keeps
// max_backups (3 by default) of max_size (2 MiB) each.
const maxRotations = 16

// ConsoleText is the whole serial console so far. libvirt hands a file
// chardev to virtlogd, which rotates it at 2 MiB (virtlogd.conf
// max_size) into console.log.0, .1, ...: they are read oldest first, then
// console.log.
func (d *Domain) ConsoleText() ([]byte, error) {
	var all []byte
	for i := maxRotations - 1; i >= 0; i-- {
		b, err := os.ReadFile(fmt.Sprintf("%s.%d", d.Console, i))
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, err
		}
		all = append(all, b...)
	}
	b, err := os.ReadFile(d.Console)
	return append(all, b...), err
}

// Truth is the guest's own view of itself, from its console (guesttest).
func (d *Domain) Truth(t testing.TB) *guesttest.Truth {
	t.Helper()
	b, err := d.ConsoleText()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := guesttest.ParseConsole(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", d.Console, err)
	}
	if !tr.Ready {
		t.Fatalf("%s: no READY", d.Console)
	}
	return tr
}

// State is the domain's libvirt state (golibvirt.DomainRunning, ...).
func (d *Domain) State(t testing.TB) golibvirt.DomainState {
	t.Helper()
	st, _, err := d.l.DomainGetState(d.d, 0)
	if err != nil {
		t.Fatalf("libvirt: state of %s: %v", d.Name, err)
	}
	return golibvirt.DomainState(st)
}

// Libvirt is the helper's own connection and the domain, for tests that
// check through libvirt independently of the code under test.
func (d *Domain) Libvirt() (*golibvirt.Libvirt, golibvirt.Domain) { return d.l, d.d }

// Spec is the domain's guest spec.
func (d *Domain) Spec() string { return "libvirt:" + d.Name }

// Destroy stops the domain (virDomainDestroy); a transient domain is then
// gone. Calling it again does nothing.
func (d *Domain) Destroy() error {
	if d.d.Name == "" {
		return nil
	}
	err := d.l.DomainDestroy(d.d)
	d.d = golibvirt.Domain{}
	return err
}

// LogFile is the domain's log, written by libvirt (and virtlogd): the QEMU
// command line and, for instance, its taints.
func (d *Domain) LogFile() string { return filepath.Join("/var/log/libvirt/qemu", d.Name+".log") }

// ListeningTCP lists the local addresses (hex, as /proc/net/tcp{,6} has
// them) of the TCP sockets process pid listens on: its socket fds'
// inodes matched with the LISTEN rows of its network namespace.
func ListeningTCP(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []string
	for _, f := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			c := strings.Fields(sc.Text())
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(c) > 9 && c[3] == "0A" && inodes[c[9]] {
				out = append(out, c[1])
			}
		}
		fh.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
