package scan

import (
	"path"
	"sort"
	"strings"
)

// FileTypeUnknown is the filetype of a file no signature matches (as Loki
// says it).
const FileTypeUnknown = "UNKNOWN"

// fileTypeSig is one magic-bytes signature and the filetype it names.
type fileTypeSig struct {
	magic string
	name  string
}

// fileTypeSigs are the file type signatures of LOKI and THOR: the table
// signature-base ships (misc/file-type-signatures.txt), whose names are the
// values signature-base's rules test (filetype == "EXE", "ELF", "JSP",
// "ASP", "PHP", "BATCH", "RTF", "MDMP"...), plus the thin Mach-O magics
// for "MACH-O", a THOR value the rules test that the table has no entry
// for. Where two signatures are prefixes of one another the longer one
// wins (so "<%@" is ASP and "<%" JSP; Loki takes the first in file order,
// which makes every ASP page "JSP"). Two entries of the table that name one
// kind in two spellings ("@echo" Batch beside "@ech" BATCH) are given the
// spelling the rules test. A magic listed twice keeps its last name, as in
// Loki's table (a dict). scan/SCHEMA.md lists them.
var fileTypeSigs = []fileTypeSig{
	{"\x01\x06\x01\x00", "Job File"},
	{"\x1f\x8b\x08", "GZIP"},
	{"%PDF", "PDF"},
	{"0\x00\x00\x00LfLe", "EVT"},
	{"PK\x03\x04\x14\x00\x06\x00", "Office"},
	{"PKSpX", "PKSFX"},
	{"7z\xbc\xaf\x27\x1c", "7Zip"},
	{"Function", "VBS"},
	{"BZh", "BZip2"},
	{"_'\xa8\x89", "JAR"},
	{"\xff\xd8\xff", "JPEG"},
	{"PK\x05\x06", "PKZIP"},
	{"Rar!\x1a\x07", "RAR"},
	{"WinZip", "WinZIP"},
	{"regf", "Registry Hive"},
	{"{\\rt", "RTF"},
	{"ustar", "TAR"},
	{"\xd4\xc3\xb2\xa1", "WINPCAP"},
	{"\xa1\xb2\xc3\xd4", "LIBPCAP"},
	{"\xa1\xb2\xcd\x34", "LIBPCAP"},
	{"\xffKEYB   ", "SYS Keyboard Driver"},
	{"\xff\xfe<\x00?\x00x\x00m\x00l", "Windows At Job"},
	{"<?php", "PHP"},
	{"\x0dDOC", "DOC"},
	{"# Disk D", "VMDK"},
	{"ElfFil", "EVTX"},
	{"AES", "AESCrypt"},
	{"COWD", "VMDK"},
	{"CWS", "CWS"},
	{"ZWS", "ZWS"},
	{"FWS", "FWS (Flash)"},
	{"FILE", "NTFS MFT"},
	{"JARCS\x00", "JARCS"},
	{"KDM", "VMDK"},
	{"L\x00\x00\x00\x01\x14\x02\x00", "LNK"},
	{"MSCF", "CAB"},
	{"PK\x03\x04", "ZIP"},
	{"<?xml", "XML"},
	{"conectix", "VHD"},
	{"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "OLE"},
	{"@ech", "BATCH"},
	{"@ECH", "BATCH"},
	{"\xff\xfe\x90\x02\x01\x00", "Trace Log File"},
	{"#!/", "UNIX SCRIPT"},
	{"MDMP", "MDMP"},
	{"\xff\xfe<\x00%\x00", "JSP"},
	{"\xfe\xff\x00<\x00%", "JSP"},
	{"0:00:00", "Log Relative"},
	{"\x7fE", "ELF"},
	{"#!", "Script"},
	{"\x1f\x9d", "TARZ"},
	{"\x1f\xa0", "TARZ"},
	{"<%", "JSP"},
	{"<%@", "ASP"},
	{"\xff\xfe<\x00%\x00@\x00", "ASP"},
	{"\xfe\xff\x00<\x00%\x00@", "ASP"},
	{"MZ", "EXE"},
	{"\xff\xfe", "UTF16-Encoded File LE"},
	{"\xfe\xff", "UTF16-Encoded File BE"},
	{"\xca\xfe", "Java Class or DYLIB"},
	{"[00000000:", "MimiLSA Log"},
	{"echo", "BATCH"},
	{"[Int", "Internet Shortcut"},
	{"\xff\xfev\x00a\x00r\x00", "Emotet JS"},
	{"\xff\xfeV\x00e\x00r\x00s\x00i\x00o", "WER"},
	{"V\x00e\x00r\x00s\x00i\x00o\x00n", "WER"},
	{"AT&TFORM", "Gitlab EXIF"},
	{"<body>", "Web"},
	{"On Error Resume", "VBS"},
	{"<html", "HTML"},
	{"<HTML", "HTML"},
	{"-----BEGIN", "Certificate PEM"},
	{"Salted__", "OpenSSL Salted Format"},
	{"<%--", "JSP"},
	{"TV", "Base64 EXE"},
	// THOR's MACH-O (thin binaries, both byte orders, 32 and 64 bit).
	{"\xfe\xed\xfa\xce", "MACH-O"},
	{"\xfe\xed\xfa\xcf", "MACH-O"},
	{"\xce\xfa\xed\xfe", "MACH-O"},
	{"\xcf\xfa\xed\xfe", "MACH-O"},
}

// fileTypeByLen is fileTypeSigs, longest magic first (stable), so the
// first match is the most specific.
var fileTypeByLen = func() []fileTypeSig {
	s := append([]fileTypeSig(nil), fileTypeSigs...)
	sort.SliceStable(s, func(i, j int) bool { return len(s[i].magic) > len(s[j].magic) })
	return s
}()

// FileTypes lists the filetype values vmscope sets, sorted, without
// duplicates (FileTypeUnknown included).
func FileTypes() []string {
	seen := map[string]bool{FileTypeUnknown: true}
	out := []string{FileTypeUnknown}
	for _, s := range fileTypeSigs {
		if !seen[s.name] {
			seen[s.name] = true
			out = append(out, s.name)
		}
	}
	sort.Strings(out)
	return out
}

// fileType names a file's type from its first bytes (see [Externals]).
func fileType(head []byte) string {
	for _, s := range fileTypeByLen {
		if len(head) >= len(s.magic) && string(head[:len(s.magic)]) == s.magic {
			return s.name
		}
	}
	return FileTypeUnknown
}

// extension is the lower-case extension of a guest path with its dot,
// "" when the base name has none (".bashrc" has none, as in Loki).
func extension(p string) string {
	b := path.Base(p)
	i := strings.LastIndexByte(b, '.')
	if i <= 0 {
		return ""
	}
	return strings.ToLower(b[i:])
}
