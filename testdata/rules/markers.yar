// Test rules for the scan fixtures (testdata/fixtures.sh, gentree -kind scan).
// They use no external variables, so the yara CLI evaluates them exactly as
// vmscope does and serves as the reference.

rule Marker_Nested { strings: $m = "VMSCOPE_MARKER_NESTED" condition: $m }
rule Marker_Straddle { strings: $m = "VMSCOPE_MARKER_STRADDLE" condition: $m }
rule Marker_Middle { strings: $m = "VMSCOPE_MARKER_MIDDLE" condition: $m }
rule Marker_End { strings: $m = "VMSCOPE_MARKER_END" condition: $m at filesize - 18 }
rule Marker_P2 { strings: $m = "VMSCOPE_MARKER_P2" condition: $m }
rule Marker_Overlay { strings: $m = "VMSCOPE_MARKER_OVERLAY" condition: $m }
rule Eicar_Anywhere { strings: $e = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE" condition: $e }
rule Big_File { condition: filesize > 8MB and uint32(0) != 0 }
rule Elf_Header { condition: uint32(0) == 0x464c457f }
