// Package lukstest reads what `cryptsetup luksDump` printed of a LUKS1 or
// LUKS2 header, for tests: the independent reference that package luks
// and the commands reporting encrypted volumes are checked against.
package lukstest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Dump is what luksDump printed: version, UUID, label, cipher with its
// mode ("aes-xts-plain64"), key bits, the enabled keyslots, the payload
// offset in bytes, the epoch (LUKS2), the hash.
type Dump struct {
	Version, KeyBits int
	UUID, Label      string
	Cipher           string
	Slots            []int
	Payload          int64
	Epoch            uint64
	Hash             string
}

var slotLine = regexp.MustCompile(`^  (\d+): luks2$`)

// ParseFile parses the luksDump output saved in path.
func ParseFile(path string) (Dump, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Dump{}, err
	}
	return Parse(b)
}

// Parse parses luksDump output.
func Parse(b []byte) (Dump, error) {
	var d Dump
	var mode string
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		var bad error
		num := func() int64 {
			f := strings.Fields(v)
			if len(f) == 0 {
				bad = fmt.Errorf("luksDump line %q: no number", line)
				return 0
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				bad = fmt.Errorf("luksDump line %q: %w", line, err)
			}
			return n
		}
		switch {
		case !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") && strings.HasSuffix(line, ":") && v == "":
			section = k
		case k == "Version":
			d.Version = int(num())
		case k == "UUID":
			d.UUID = v
		case k == "Label" && v != "(no label)":
			d.Label = v
		case k == "Epoch":
			d.Epoch = uint64(num())
		case k == "Cipher name":
			d.Cipher = v
		case k == "Cipher mode":
			mode = v
		case k == "Hash spec":
			d.Hash = v
		case k == "MK bits":
			d.KeyBits = int(num())
		case k == "Payload offset":
			d.Payload = num() * 512
		case strings.HasPrefix(k, "Key Slot ") && v == "ENABLED":
			n, err := strconv.Atoi(strings.TrimPrefix(k, "Key Slot "))
			if err != nil {
				return d, fmt.Errorf("luksDump line %q: %w", line, err)
			}
			d.Slots = append(d.Slots, n)
		case section == "Keyslots" && slotLine.MatchString(line):
			n, _ := strconv.Atoi(slotLine.FindStringSubmatch(line)[1])
			d.Slots = append(d.Slots, n)
		case section == "Keyslots" && strings.TrimSpace(k) == "Key" && d.KeyBits == 0:
			d.KeyBits = int(num())
		case section == "Data segments" && strings.TrimSpace(k) == "offset" && d.Payload == 0:
			d.Payload = num()
		case section == "Data segments" && strings.TrimSpace(k) == "cipher":
			d.Cipher = v
		case section == "Digests" && strings.TrimSpace(k) == "Hash" && d.Hash == "":
			d.Hash = v
		}
		if bad != nil {
			return d, bad
		}
	}
	if mode != "" {
		d.Cipher += "-" + mode
	}
	if d.Version == 0 || d.UUID == "" {
		return d, fmt.Errorf("luksDump output without a version or UUID")
	}
	return d, nil
}
