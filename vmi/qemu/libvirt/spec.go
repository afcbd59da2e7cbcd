package libvirt

import (
	"fmt"
	"net/url"
	"path"
	"strings"
	"unicode/utf8"
)

// DefaultURI is the libvirt connection a spec without ?uri= uses: the
// system instance of the QEMU driver, on its local socket.
const DefaultURI = "qemu:///system"

// Bounds of a spec.
const (
	maxSpec       = 4096
	maxDomainName = 1024
)

// Spec names a libvirt domain: libvirt:DOMAIN[?uri=URI]. URI is a local
// QEMU-driver URI of the system instance: qemu:///system, or
// qemu+unix:///system with an optional ?socket=ABSPATH. Remote URIs are
// refused: the process path and the PID check need the domain's QEMU on
// this host.
type Spec struct {
	Domain string
	URI    string // DefaultURI when the spec gave none
}

// ParseSpec parses libvirt:DOMAIN[?uri=URI]. "uri=" is the only option
// and the last one: everything after it is the URI, whose own query
// (?socket=) follows it unescaped.
func ParseSpec(s string) (Spec, error) {
	if len(s) > maxSpec {
		return Spec{}, fmt.Errorf("libvirt: guest spec of %d bytes (at most %d)", len(s), maxSpec)
	}
	rest, ok := strings.CutPrefix(s, "libvirt:")
	if !ok {
		return Spec{}, fmt.Errorf("libvirt: guest %q: want libvirt:DOMAIN[?uri=qemu:///system]", s)
	}
	name, query, hasQuery := strings.Cut(rest, "?")
	sp := Spec{Domain: name, URI: DefaultURI}
	if err := checkDomainName(name); err != nil {
		return Spec{}, fmt.Errorf("libvirt: guest %q: %w", s, err)
	}
	if hasQuery {
		u, ok := strings.CutPrefix(query, "uri=")
		if !ok {
			k, _, _ := strings.Cut(query, "=")
			return Spec{}, fmt.Errorf("libvirt: guest %q: unknown option %q (want uri=URI)", s, k)
		}
		if err := checkURI(u); err != nil {
			return Spec{}, fmt.Errorf("libvirt: guest %q: uri %q: %w", s, u, err)
		}
		sp.URI = u
	}
	return sp, nil
}

// checkDomainName accepts what libvirt accepts for a domain name (no
// '/', not empty) that is also printable UTF-8 without '?'.
func checkDomainName(n string) error {
	switch {
	case n == "":
		return fmt.Errorf("empty domain name")
	case len(n) > maxDomainName:
		return fmt.Errorf("domain name of %d bytes (at most %d)", len(n), maxDomainName)
	case !utf8.ValidString(n):
		return fmt.Errorf("domain name is not UTF-8")
	case strings.ContainsAny(n, "/\x00"):
		return fmt.Errorf("domain name %q has a '/' or NUL (libvirt allows neither)", n)
	}
	for _, r := range n {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("domain name %q has a control character", n)
		}
	}
	return nil
}

// checkURI accepts the local system URIs of the QEMU driver.
func checkURI(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	switch {
	case u.Scheme != "qemu" && u.Scheme != "qemu+unix":
		return fmt.Errorf("scheme %q: want qemu or qemu+unix (a local QEMU driver)", u.Scheme)
	case u.Host != "" || u.User != nil:
		return fmt.Errorf("host %q: remote libvirt is not supported (the domain's QEMU must run on this host)", u.Host)
	case u.Path != "/system":
		return fmt.Errorf("path %q: want /system (vmscope reads the system instance's runtime directory)", u.Path)
	case u.Fragment != "" || u.Opaque != "":
		return fmt.Errorf("unexpected %q", s)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return err
	}
	for k, v := range q {
		if k != "socket" || u.Scheme != "qemu+unix" || len(v) != 1 || !path.IsAbs(v[0]) {
			return fmt.Errorf("option %q: only socket=ABSPATH, with qemu+unix", k)
		}
	}
	return nil
}

// String is the spec's text form; ParseSpec(s.String()) == s.
func (s Spec) String() string {
	if s.URI == "" || s.URI == DefaultURI {
		return "libvirt:" + s.Domain
	}
	return "libvirt:" + s.Domain + "?uri=" + s.URI
}
