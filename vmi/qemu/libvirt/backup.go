package libvirt

import (
	"context"
	"encoding/xml"
	"fmt"
	"path/filepath"
	"strings"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/vmscope/vmscope/vmerr"
)

// Checkpoints and pull-mode backups: what a dirty poll of a libvirt
// domain needs (libvirt's own names for QEMU's persistent dirty bitmaps
// and fleecing NBD export), as `virsh checkpoint-create`, `virsh
// backup-begin` with <domainbackup mode='pull'> and `virsh domjobabort`
// do them. Thin wrappers: the XML is built and parsed here, bounded.

// ErrBackupXML: libvirt's backup job description is not what a pull
// backup gives.
var ErrBackupXML = vmerr.New("libvirt: backup job xml", vmerr.ErrCorrupt)

// maxXML bounds a backup job description (a few hundred bytes a disk).
const maxXML = 1 << 20

// CreateCheckpoint creates checkpoint name of the running domain over the
// disks (targets such as "vda"): a persistent dirty bitmap named name on
// each disk's image, from now on (virDomainCheckpointCreateXML).
func (d *Domain) CreateCheckpoint(ctx context.Context, name string, disks []string) error {
	x, err := checkpointXML(name, disks)
	if err != nil {
		return err
	}
	_, err = call(ctx, func() (golibvirt.DomainCheckpoint, error) { return d.c.l.DomainCheckpointCreateXML(d.dom, x, 0) })
	if err != nil {
		return fmt.Errorf("libvirt: domain %q: checkpoint %q: %w", d.name, name, err)
	}
	return nil
}

func checkpointXML(name string, disks []string) (string, error) {
	if name == "" || len(disks) == 0 {
		return "", fmt.Errorf("libvirt: a checkpoint needs a name and disks")
	}
	type disk struct {
		Name       string `xml:"name,attr"`
		Checkpoint string `xml:"checkpoint,attr"`
	}
	var c struct {
		XMLName xml.Name `xml:"domaincheckpoint"`
		Name    string   `xml:"name"`
		Disks   []disk   `xml:"disks>disk"`
	}
	c.Name = name
	for _, t := range disks {
		c.Disks = append(c.Disks, disk{Name: t, Checkpoint: "bitmap"})
	}
	b, err := xml.Marshal(c)
	return string(b), err
}

// DeleteCheckpoint deletes a checkpoint and its bitmaps
// (virDomainCheckpointDelete); its changes merge into its parent's.
func (d *Domain) DeleteCheckpoint(ctx context.Context, name string) error {
	_, err := call(ctx, func() (struct{}, error) {
		cp, err := d.c.l.DomainCheckpointLookupByName(d.dom, name, 0)
		if err == nil {
			err = d.c.l.DomainCheckpointDelete(cp, 0)
		}
		return struct{}{}, err
	})
	if err != nil {
		return fmt.Errorf("libvirt: domain %q: delete checkpoint %q: %w", d.name, name, err)
	}
	return nil
}

// PullBackup is a pull-mode backup: libvirt exports each disk frozen at
// the backup's start (a fleecing overlay on Scratch) over NBD on a unix
// socket.
type PullBackup struct {
	// Socket is the NBD server's unix socket; where libvirt's QEMU user
	// can create it.
	Socket string
	// Incremental, when not "", is the checkpoint the export's dirty
	// bitmap starts from: the bitmap holds the writes between it and the
	// backup's start.
	Incremental string
	// Disks are the disks to export.
	Disks []BackupDisk
	// Checkpoint, when not "", is a checkpoint created at the backup's
	// start (the next poll's Incremental).
	Checkpoint string
}

// BackupDisk is a disk of a PullBackup.
type BackupDisk struct {
	Target  string // "vda"
	Scratch string // the fleecing overlay (qcow2, libvirt creates it); where libvirt's QEMU user can write
}

// BeginPullBackup starts a pull backup (virDomainBackupBegin). The job
// runs until AbortJob.
func (d *Domain) BeginPullBackup(ctx context.Context, b PullBackup) error {
	bx, cx, err := backupXML(b)
	if err != nil {
		return err
	}
	var cp golibvirt.OptString
	if cx != "" {
		cp = golibvirt.OptString{cx}
	}
	_, err = call(ctx, func() (struct{}, error) { return struct{}{}, d.c.l.DomainBackupBegin(d.dom, bx, cp, 0) })
	if err != nil {
		return fmt.Errorf("libvirt: domain %q: backup-begin: %w", d.name, err)
	}
	return nil
}

func backupXML(b PullBackup) (backup, checkpoint string, err error) {
	if !filepath.IsAbs(b.Socket) || len(b.Disks) == 0 {
		return "", "", fmt.Errorf("libvirt: a pull backup needs an absolute socket path and disks")
	}
	type scratch struct {
		File string `xml:"file,attr"`
	}
	type disk struct {
		Name    string  `xml:"name,attr"`
		Backup  string  `xml:"backup,attr"`
		Type    string  `xml:"type,attr"`
		Scratch scratch `xml:"scratch"`
	}
	type server struct {
		Transport string `xml:"transport,attr"`
		Socket    string `xml:"socket,attr"`
	}
	var x struct {
		XMLName     xml.Name `xml:"domainbackup"`
		Mode        string   `xml:"mode,attr"`
		Incremental string   `xml:"incremental,omitempty"`
		Server      server   `xml:"server"`
		Disks       []disk   `xml:"disks>disk"`
	}
	x.Mode, x.Incremental = "pull", b.Incremental
	x.Server = server{Transport: "unix", Socket: b.Socket}
	var targets []string
	for _, dk := range b.Disks {
		if dk.Target == "" || !filepath.IsAbs(dk.Scratch) {
			return "", "", fmt.Errorf("libvirt: backup disk %q: needs a target and an absolute scratch path", dk.Target)
		}
		x.Disks = append(x.Disks, disk{Name: dk.Target, Backup: "yes", Type: "file", Scratch: scratch{dk.Scratch}})
		targets = append(targets, dk.Target)
	}
	bb, err := xml.Marshal(x)
	if err != nil {
		return "", "", err
	}
	if b.Checkpoint != "" {
		if checkpoint, err = checkpointXML(b.Checkpoint, targets); err != nil {
			return "", "", err
		}
	}
	return string(bb), checkpoint, nil
}

// BackupJob is the running pull backup as libvirt describes it
// (virDomainBackupGetXMLDesc).
type BackupJob struct {
	Socket      string // the NBD server's unix socket
	Incremental string // the checkpoint it is incremental from; "" for full
	Exports     []BackupExport
}

// BackupExport is a disk's NBD export.
type BackupExport struct {
	Target string // "vda"
	Name   string // the NBD export name ("vda")
	Bitmap string // the dirty bitmap exported with it ("backup-vda"); "" for a full backup
}

// Context is the NBD metadata context of the export's dirty bitmap,
// "qemu:dirty-bitmap:NAME"; "" without one.
func (e BackupExport) Context() string {
	if e.Bitmap == "" {
		return ""
	}
	return "qemu:dirty-bitmap:" + e.Bitmap
}

// BackupJob describes the running backup job.
func (d *Domain) BackupJob(ctx context.Context) (BackupJob, error) {
	x, err := call(ctx, func() (string, error) { return d.c.l.DomainBackupGetXMLDesc(d.dom, 0) })
	if err != nil {
		return BackupJob{}, fmt.Errorf("libvirt: domain %q: backup-dumpxml: %w", d.name, err)
	}
	return parseBackupJob([]byte(x))
}

func parseBackupJob(b []byte) (BackupJob, error) {
	if len(b) > maxXML {
		return BackupJob{}, fmt.Errorf("%w: %d bytes (at most %d)", ErrBackupXML, len(b), maxXML)
	}
	var x struct {
		XMLName     xml.Name `xml:"domainbackup"`
		Mode        string   `xml:"mode,attr"`
		Incremental string   `xml:"incremental"`
		Server      struct {
			Transport string `xml:"transport,attr"`
			Socket    string `xml:"socket,attr"`
		} `xml:"server"`
		Disks []struct {
			Name         string `xml:"name,attr"`
			Backup       string `xml:"backup,attr"`
			ExportName   string `xml:"exportname,attr"`
			ExportBitmap string `xml:"exportbitmap,attr"`
		} `xml:"disks>disk"`
	}
	if err := xml.Unmarshal(b, &x); err != nil {
		return BackupJob{}, fmt.Errorf("%w: %v", ErrBackupXML, err)
	}
	if x.Mode != "pull" || x.Server.Transport != "unix" || !filepath.IsAbs(x.Server.Socket) {
		return BackupJob{}, fmt.Errorf("%w: mode %q, server %q %q: want a pull backup on a unix socket", ErrBackupXML, x.Mode, x.Server.Transport, x.Server.Socket)
	}
	j := BackupJob{Socket: x.Server.Socket, Incremental: strings.TrimSpace(x.Incremental)}
	for _, dk := range x.Disks {
		if dk.Backup == "no" {
			continue
		}
		if dk.Name == "" || dk.ExportName == "" {
			return BackupJob{}, fmt.Errorf("%w: disk %q without an export name", ErrBackupXML, dk.Name)
		}
		j.Exports = append(j.Exports, BackupExport{Target: dk.Name, Name: dk.ExportName, Bitmap: dk.ExportBitmap})
	}
	if len(j.Exports) == 0 {
		return BackupJob{}, fmt.Errorf("%w: no exported disk", ErrBackupXML)
	}
	return j, nil
}

// AbortJob ends the domain's running job, e.g. a pull backup
// (virDomainAbortJob): the export and the scratch overlay go.
func (d *Domain) AbortJob(ctx context.Context) error {
	_, err := call(ctx, func() (struct{}, error) { return struct{}{}, d.c.l.DomainAbortJob(d.dom) })
	if err != nil {
		return fmt.Errorf("libvirt: domain %q: abort job: %w", d.name, err)
	}
	return nil
}
