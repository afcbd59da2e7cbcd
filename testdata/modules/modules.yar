// Rules of the module-aware scanning test: each needs a structure that
// testdata/modules/build.sh puts past the first 4 MiB of the bigger files.
import "pe"
import "elf"

rule pe_imports_kernel32 { condition: pe.imports("kernel32.dll") }
rule pe_imports_messagebox { condition: pe.imports("user32.dll", "MessageBoxA") }
rule pe_is_pe { condition: pe.is_pe and pe.number_of_sections > 2 }
rule elf_has_symtab { condition: for any s in elf.sections : (s.name == ".symtab") }
rule elf_rodata_big { condition: for any s in elf.sections : (s.name == ".rodata" and s.size >= 65536) }
rule elf_is_elf { condition: uint32(0) == 0x464c457f and elf.number_of_sections > 10 }
rule pad_marker { strings: $m = "VMSCOPE-PAD-END" condition: $m }
