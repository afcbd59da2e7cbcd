package fleet

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/vmscope/vmscope/vmerr"
)

// Image is one entry of an inventory: an image file and its id.
type Image struct {
	ID     string            `json:"id"`
	Path   string            `json:"path"`
	Format string            `json:"format,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Inventory is a fleet's list of images, sorted by id, ids unique.
type Inventory struct {
	Images []Image
}

// ErrInventory: an inventory that cannot be used (a bad line, an unsafe or
// duplicate id).
var ErrInventory = vmerr.New("fleet: bad inventory", vmerr.ErrCorrupt)

// Limits on what an inventory may hold (it is read whole).
const (
	maxIDLen      = 200
	maxLineLen    = 1 << 20
	maxInventory  = 1 << 20 // images
	maxDomainXML  = 16 << 20
	maxDomainDisk = 256
)

// ValidID reports why id cannot name an image (nil when it can): an id
// names files (DIR/<id>.state, OUT/<run>/<id>.ndjson), so it is 1 to 200
// bytes of letters, digits and . _ - + @ # :, not starting with a dot.
func ValidID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("%w: id %q: want 1 to %d bytes", ErrInventory, id, maxIDLen)
	}
	if id[0] == '.' {
		return fmt.Errorf("%w: id %q starts with a dot", ErrInventory, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("._-+@#:", c) >= 0:
		default:
			return fmt.Errorf("%w: id %q: byte %q at %d is not allowed (letters, digits and . _ - + @ # :)", ErrInventory, id, c, i)
		}
	}
	return nil
}

// NewInventory checks the images (ids valid and unique, paths given) and
// returns them sorted by id.
func NewInventory(images []Image) (*Inventory, error) {
	if len(images) > maxInventory {
		return nil, fmt.Errorf("%w: %d images, more than %d", ErrInventory, len(images), maxInventory)
	}
	inv := &Inventory{Images: slices.Clone(images)}
	sort.SliceStable(inv.Images, func(i, j int) bool { return inv.Images[i].ID < inv.Images[j].ID })
	for i, im := range inv.Images {
		if err := ValidID(im.ID); err != nil {
			return nil, err
		}
		if i > 0 && inv.Images[i-1].ID == im.ID {
			return nil, fmt.Errorf("%w: id %q twice (%s and %s)", ErrInventory, im.ID, inv.Images[i-1].Path, im.Path)
		}
		if im.Path == "" {
			return nil, fmt.Errorf("%w: id %q has no path", ErrInventory, im.ID)
		}
	}
	return inv, nil
}

// IDs returns the ids of the inventory, sorted.
func (inv *Inventory) IDs() []string {
	ids := make([]string, len(inv.Images))
	for i, im := range inv.Images {
		ids[i] = im.ID
	}
	return ids
}

// Lookup returns the image of id.
func (inv *Inventory) Lookup(id string) (Image, bool) {
	i, ok := sort.Find(len(inv.Images), func(i int) int { return strings.Compare(id, inv.Images[i].ID) })
	if !ok {
		return Image{}, false
	}
	return inv.Images[i], true
}

// WriteNDJSON writes the inventory, one image per line, sorted by id.
func (inv *Inventory) WriteNDJSON(w io.Writer) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	for _, im := range inv.Images {
		if err := enc.Encode(im); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// ReadInventoryFile reads the inventory file at path (ParseInventory).
func ReadInventoryFile(path string) (*Inventory, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	inv, err := ParseInventory(f, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("inventory %s: %w", path, err)
	}
	return inv, nil
}

// ParseInventory reads an inventory in one of three forms, told apart by
// its first line: NDJSON (a line starting with "{": objects with id, path,
// optional format and labels), CSV (a header line naming the columns id
// and path, optional format and labels as k=v;k=v) or lines of image
// paths (the id is the file's base name without its extension). Blank
// lines and lines starting with # are ignored. A relative path is taken
// relative to dir.
func ParseInventory(r io.Reader, dir string) (*Inventory, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLineLen)
	var lines []string
	for sc.Scan() {
		if len(lines) >= maxInventory {
			return nil, fmt.Errorf("%w: more than %d lines", ErrInventory, maxInventory)
		}
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: line %d: %v", ErrInventory, len(lines)+1, err)
	}
	first := ""
	for _, l := range lines {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			first = t
			break
		}
	}
	var images []Image
	var err error
	switch {
	case first == "":
	case strings.HasPrefix(first, "{"):
		images, err = parseNDJSON(lines)
	case isCSVHeader(first):
		images, err = parseCSV(lines)
	default:
		images, err = parsePaths(lines)
	}
	if err != nil {
		return nil, err
	}
	for i := range images {
		if images[i].Path != "" && !filepath.IsAbs(images[i].Path) && dir != "" {
			images[i].Path = filepath.Join(dir, images[i].Path)
		}
	}
	return NewInventory(images)
}

func isCSVHeader(line string) bool {
	cols, err := csv.NewReader(strings.NewReader(line)).Read()
	return err == nil && slices.Contains(cols, "id") && slices.Contains(cols, "path")
}

func parseNDJSON(lines []string) ([]Image, error) {
	var images []Image
	for n, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		dec := json.NewDecoder(strings.NewReader(t))
		dec.DisallowUnknownFields()
		var im Image
		if err := dec.Decode(&im); err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrInventory, n+1, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("%w: line %d: more than one object", ErrInventory, n+1)
		}
		images = append(images, im)
	}
	return images, nil
}

func parseCSV(lines []string) ([]Image, error) {
	var body []string
	for _, l := range lines {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			body = append(body, l)
		}
	}
	cr := csv.NewReader(strings.NewReader(strings.Join(body, "\n")))
	cr.FieldsPerRecord = 0
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("%w: csv header: %v", ErrInventory, err)
	}
	col := map[string]int{}
	for i, h := range header {
		switch h {
		case "id", "path", "format", "labels":
		default:
			return nil, fmt.Errorf("%w: csv header: unknown column %q (id, path, format, labels)", ErrInventory, h)
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%w: csv header: column %q twice", ErrInventory, h)
		}
		col[h] = i
	}
	var images []Image
	for rec := 2; ; rec++ {
		row, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: csv record %d: %v", ErrInventory, rec, err)
		}
		get := func(name string) string {
			if i, ok := col[name]; ok {
				return row[i]
			}
			return ""
		}
		im := Image{ID: get("id"), Path: get("path"), Format: get("format")}
		if l := get("labels"); l != "" {
			im.Labels = map[string]string{}
			for _, kv := range strings.Split(l, ";") {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return nil, fmt.Errorf("%w: csv record %d: label %q is not k=v", ErrInventory, rec, kv)
				}
				im.Labels[k] = v
			}
		}
		images = append(images, im)
	}
	return images, nil
}

func parsePaths(lines []string) ([]Image, error) {
	var images []Image
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		images = append(images, Image{ID: PathID(t), Path: t})
	}
	return images, nil
}

// PathID is the id of an image given by its path alone: the base name
// without its extension.
func PathID(path string) string {
	b := filepath.Base(path)
	if e := filepath.Ext(b); e != "" && e != b {
		b = strings.TrimSuffix(b, e)
	}
	return b
}

// Glob returns the inventory of the files matching the patterns (ids by
// PathID; paths absolute). A pattern that matches nothing is an error.
func Glob(patterns ...string) (*Inventory, error) {
	var images []Image
	for _, p := range patterns {
		ms, err := filepath.Glob(p)
		if err != nil {
			return nil, fmt.Errorf("glob %q: %w", p, err)
		}
		if len(ms) == 0 {
			return nil, fmt.Errorf("glob %q: no file matches", p)
		}
		for _, m := range ms {
			fi, err := os.Stat(m)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			abs, err := filepath.Abs(m)
			if err != nil {
				return nil, err
			}
			images = append(images, Image{ID: PathID(m), Path: abs})
		}
	}
	return NewInventory(images)
}

// domainXML is the part of a libvirt domain definition the inventory reads.
type domainXML struct {
	XMLName xml.Name `xml:"domain"`
	Name    string   `xml:"name"`
	UUID    string   `xml:"uuid"`
	Disks   []struct {
		Type   string `xml:"type,attr"`
		Device string `xml:"device,attr"`
		Driver struct {
			Type string `xml:"type,attr"`
		} `xml:"driver"`
		Source struct {
			File string `xml:"file,attr"`
		} `xml:"source"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
	} `xml:"devices>disk"`
}

// ParseDomain reads one libvirt domain definition (the XML of virsh
// dumpxml or /etc/libvirt/qemu/*.xml) and returns its file-backed disks as
// images "DOMAIN#DEV" with the labels domain, uuid and dev.
func ParseDomain(r io.Reader) ([]Image, error) {
	var d domainXML
	dec := xml.NewDecoder(io.LimitReader(r, maxDomainXML))
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("%w: domain xml at byte %d: %v", ErrInventory, dec.InputOffset(), err)
	}
	if d.Name == "" {
		return nil, fmt.Errorf("%w: domain xml: no <name>", ErrInventory)
	}
	if len(d.Disks) > maxDomainDisk {
		return nil, fmt.Errorf("%w: domain %s: %d disks, more than %d", ErrInventory, d.Name, len(d.Disks), maxDomainDisk)
	}
	var images []Image
	for i, dk := range d.Disks {
		if dk.Type != "file" || (dk.Device != "" && dk.Device != "disk") || dk.Source.File == "" {
			continue
		}
		if dk.Target.Dev == "" {
			return nil, fmt.Errorf("%w: domain %s: disk %d (%s) has no <target dev>", ErrInventory, d.Name, i, dk.Source.File)
		}
		labels := map[string]string{"domain": d.Name, "dev": dk.Target.Dev}
		if d.UUID != "" {
			labels["uuid"] = d.UUID
		}
		images = append(images, Image{ID: d.Name + "#" + dk.Target.Dev, Path: dk.Source.File, Format: dk.Driver.Type, Labels: labels})
	}
	return images, nil
}

// Libvirt returns the inventory of the domain XML files (*.xml) in dir,
// read without libvirtd: one id per file-backed disk, DOMAIN#DEV.
func Libvirt(dir string) (*Inventory, error) {
	ms, err := filepath.Glob(filepath.Join(dir, "*.xml"))
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("libvirt %s: no domain *.xml", dir)
	}
	sort.Strings(ms)
	var images []Image
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			return nil, err
		}
		if !bytes.Contains(b, []byte("<domain")) {
			continue // a network or pool definition
		}
		ims, err := ParseDomain(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m, err)
		}
		images = append(images, ims...)
	}
	return NewInventory(images)
}
