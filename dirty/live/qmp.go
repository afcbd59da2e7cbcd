package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmscope/vmscope/vmi/qemu"
)

// qmp runs one QMP command and decodes its return into out (nil: ignore).
func qmp(ctx context.Context, m qemu.Monitor, cmd string, args any, out any) error {
	raw, err := m.Execute(ctx, cmd, args)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("live: qmp %s: answer: %w", cmd, err)
	}
	return nil
}

// Bitmap is a dirty bitmap of a block node as QMP reports it.
type Bitmap struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Busy         bool   `json:"busy"`
	Inconsistent bool   `json:"inconsistent"`
	Granularity  int64  `json:"granularity"`
	Count        int64  `json:"count"`
}

// Disk is a block device of the guest: its format node (where the
// tracking bitmaps live, the backing of the fleecing image) and how the
// user may name it.
type Disk struct {
	Device string // the -drive id ("" with -blockdev)
	QDev   string // the device's QOM path (/machine/peripheral/ID/virtio-backend)
	Node   string // the top (format) node
	File   string // its image file
	Format string // its driver (qcow2, raw)
	Size   int64
	// Bitmaps are the dirty bitmaps of the node.
	Bitmaps []Bitmap
}

// Identity names the node for the poll state: a QEMU restarted on
// another image, or another disk, has another identity.
func (d *Disk) Identity() string {
	return fmt.Sprintf("node=%s file=%s size=%d", d.Node, d.File, d.Size)
}

// ID is how a message names the disk.
func (d *Disk) ID() string {
	if d.Device != "" {
		return d.Device
	}
	return d.Node
}

// qdevID is the device id in a QOM path /machine/peripheral/ID/...
func qdevID(qdev string) string {
	rest, ok := strings.CutPrefix(qdev, "/machine/peripheral/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}

// Disks lists the guest's block devices that hold a medium.
func Disks(ctx context.Context, m qemu.Monitor) ([]*Disk, error) {
	var blocks []struct {
		Device   string `json:"device"`
		QDev     string `json:"qdev"`
		Inserted *struct {
			NodeName string `json:"node-name"`
			File     string `json:"file"`
			Drv      string `json:"drv"`
			Image    struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := qmp(ctx, m, "query-block", nil, &blocks); err != nil {
		return nil, err
	}
	var nodes []struct {
		NodeName string   `json:"node-name"`
		Bitmaps  []Bitmap `json:"dirty-bitmaps"`
	}
	if err := qmp(ctx, m, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	var out []*Disk
	for _, b := range blocks {
		if b.Inserted == nil || b.Inserted.NodeName == "" || strings.HasPrefix(b.Inserted.NodeName, Prefix) {
			continue
		}
		d := &Disk{Device: b.Device, QDev: b.QDev, Node: b.Inserted.NodeName, File: b.Inserted.File,
			Format: b.Inserted.Drv, Size: b.Inserted.Image.VirtualSize}
		for _, n := range nodes {
			if n.NodeName == d.Node {
				d.Bitmaps = n.Bitmaps
			}
		}
		out = append(out, d)
	}
	return out, nil
}

// FindDisk returns the disk named id (its QOM path, its device id, its
// node name or its -drive id); "" picks the only disk.
func FindDisk(ctx context.Context, m qemu.Monitor, id string) (*Disk, error) {
	ds, err := Disks(ctx, m)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, d := range ds {
		names = append(names, d.describe())
		if id != "" && (id == d.QDev || id == qdevID(d.QDev) || id == d.Node || id == d.Device && d.Device != "") {
			return d, nil
		}
	}
	switch {
	case len(ds) == 0:
		return nil, fmt.Errorf("live: the guest has no block device with a medium")
	case id == "" && len(ds) == 1:
		return ds[0], nil
	case id == "":
		return nil, fmt.Errorf("live: the guest has %d disks; pick one with --disk: %s", len(ds), strings.Join(names, "; "))
	}
	return nil, fmt.Errorf("live: no disk %q; the guest has: %s", id, strings.Join(names, "; "))
}

func (d *Disk) describe() string {
	s := "node " + d.Node
	if id := qdevID(d.QDev); id != "" {
		s += ", device " + id
	}
	if d.Device != "" {
		s += ", drive " + d.Device
	}
	return s + " (" + d.File + ")"
}

// trackName is the tracking bitmap of generation gen for tag.
func trackName(tag string, gen uint64) string {
	return fmt.Sprintf("%strack-%s-%d", Prefix, tag, gen)
}

// parseTrack splits a tracking bitmap's name into its tag and generation.
func parseTrack(name string) (tag string, gen uint64, ok bool) {
	rest, ok := strings.CutPrefix(name, Prefix+"track-")
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 {
		return "", 0, false
	}
	gen, err := strconv.ParseUint(rest[i+1:], 10, 63)
	if err != nil || gen == 0 {
		return "", 0, false
	}
	return rest[:i], gen, true
}

// tracks returns the tracking bitmaps of tag on d, by generation.
func (d *Disk) tracks(tag string) []trackBitmap {
	var out []trackBitmap
	for _, b := range d.Bitmaps {
		if t, g, ok := parseTrack(b.Name); ok && t == tag {
			out = append(out, trackBitmap{b, g})
		}
	}
	slices.SortFunc(out, func(a, b trackBitmap) int { return int(a.gen) - int(b.gen) })
	return out
}

type trackBitmap struct {
	Bitmap
	gen uint64
}

// Leftovers are the vmscope- objects in a QEMU: a poll in progress, or
// what a killed one left.
type Leftovers struct {
	Nodes   []leftNode
	Jobs    []string
	Exports []string
}

type leftNode struct {
	Name string
	File string
}

func (l *Leftovers) Empty() bool { return len(l.Nodes)+len(l.Jobs)+len(l.Exports) == 0 }

func (l *Leftovers) String() string {
	var parts []string
	for _, n := range l.Nodes {
		parts = append(parts, "node "+n.Name)
	}
	for _, j := range l.Jobs {
		parts = append(parts, "job "+j)
	}
	for _, e := range l.Exports {
		parts = append(parts, "export "+e)
	}
	return strings.Join(parts, ", ")
}

// findLeftovers lists the vmscope- nodes, jobs and exports of QEMU.
func findLeftovers(ctx context.Context, m qemu.Monitor) (*Leftovers, error) {
	l := &Leftovers{}
	var nodes []struct {
		NodeName string `json:"node-name"`
		File     string `json:"file"`
		Drv      string `json:"drv"`
	}
	if err := qmp(ctx, m, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	files := map[string]string{}
	for _, n := range nodes {
		if n.Drv == "file" {
			files[n.NodeName] = n.File
		}
	}
	for _, n := range nodes {
		// The fleecing image's file node goes with it; its file is
		// named by the file node (the qcow2 node's name is a json:
		// description, its backing being given).
		if strings.HasPrefix(n.NodeName, Prefix) && n.Drv != "file" {
			l.Nodes = append(l.Nodes, leftNode{n.NodeName, files[n.NodeName+"-file"]})
		}
	}
	var jobs []struct {
		Device string `json:"device"`
	}
	if err := qmp(ctx, m, "query-block-jobs", nil, &jobs); err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if strings.HasPrefix(j.Device, Prefix) {
			l.Jobs = append(l.Jobs, j.Device)
		}
	}
	var exps []struct {
		ID string `json:"id"`
	}
	if err := qmp(ctx, m, "query-block-exports", nil, &exps); err != nil {
		return nil, err
	}
	for _, e := range exps {
		if strings.HasPrefix(e.ID, Prefix) {
			l.Exports = append(l.Exports, e.ID)
		}
	}
	return l, nil
}

// waitGone polls until cond says the object is gone (an export deleted
// once its clients left, a cancelled job), for at most 30 s.
func waitGone(ctx context.Context, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		gone, err := cond()
		if err != nil || gone {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("live: %s still there after 30 s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func exportGone(ctx context.Context, m qemu.Monitor, id string) func() (bool, error) {
	return func() (bool, error) {
		l, err := findLeftovers(ctx, m)
		if err != nil {
			return false, err
		}
		return !slices.Contains(l.Exports, id), nil
	}
}

func jobGone(ctx context.Context, m qemu.Monitor, id string) func() (bool, error) {
	return func() (bool, error) {
		l, err := findLeftovers(ctx, m)
		if err != nil {
			return false, err
		}
		return !slices.Contains(l.Jobs, id), nil
	}
}

// isQMPError reports whether err is QEMU's answer whose description
// contains substr.
func isQMPError(err error, substr string) bool {
	var qe *qemu.QMPError
	return errors.As(err, &qe) && strings.Contains(qe.Desc, substr)
}
