// Known Linux rootkits, by artefact names (install paths, module and
// symbol names). Strings are only looked for in ELF files, or tied to a
// path, so documentation and source trees of security tools do not match.

rule Rootkit_Diamorphine
{
    meta:
        description = "Diamorphine LKM rootkit (hook and helper symbol names)"
        author = "vmscope"
        severity = "critical"
        reference = "https://github.com/m0nad/Diamorphine"
        date = "2025-01-01"
    strings:
        $s1 = "hacked_getdents"
        $s2 = "hacked_kill"
        $s3 = "give_root"
        $s4 = "module_show"
        $s5 = "is_invisible"
        $s6 = "orig_getdents"
        $s7 = "diamorphine" nocase
    condition:
        uint32(0) == 0x464c457f and ($s7 or 3 of ($s1, $s2, $s3, $s4, $s5, $s6))
}

rule Rootkit_Reptile
{
    meta:
        description = "Reptile LKM rootkit (its /reptile/ install directory or its client/helper names)"
        author = "vmscope"
        severity = "critical"
        reference = "https://github.com/f0rb1dd3n/Reptile"
        date = "2025-01-01"
    strings:
        $p1 = "/reptile/reptile"
        $p2 = "reptile_cmd"
        $p3 = "reptile_shell"
        $p4 = "reptile_module"
        $p5 = "reptile_start"
    condition:
        filepath matches /(^|\/)reptile\/(reptile|reptile_cmd|reptile_shell|reptile_start|reptile_rc|reptile\.ko)$/ or
        filename == "reptile.ko" or
        (uint32(0) == 0x464c457f and 2 of them)
}

rule Rootkit_Azazel
{
    meta:
        description = "Azazel LD_PRELOAD rootkit (name and preload strings in a shared object)"
        author = "vmscope"
        severity = "critical"
        reference = "https://github.com/chokepoint/azazel"
        date = "2025-01-01"
    strings:
        $name = "azazel" nocase
        $preload1 = "ld.so.preload"
        $preload2 = "LD_PRELOAD"
    condition:
        (uint32(0) == 0x464c457f and $name and any of ($preload*))
}

rule Rootkit_Jynx2
{
    meta:
        description = "Jynx/Jynx2 LD_PRELOAD rootkit (XxJynx install directory, jynx2.so, or a libselinux.so planted directly in /usr/lib)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $s1 = "XxJynx"
        $s2 = "jynx2" nocase
    condition:
        filepath == "/usr/lib/libselinux.so" or
        filepath matches /\/XxJynx\// or
        filename == "jynx2.so" or
        (uint32(0) == 0x464c457f and any of them)
}

rule Rootkit_Father
{
    meta:
        description = "Father LD_PRELOAD rootkit (name strings in a shared object)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $s1 = "father.so" nocase
        $s2 = "libfather" nocase
    condition:
        filename == "father.so" or (uint32(0) == 0x464c457f and any of them)
}

rule Rootkit_Bdvl
{
    meta:
        description = "bdvl (bedevil) LD_PRELOAD rootkit (name strings in a shared object, or a bdvl.so file)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $s1 = "bdvl" fullword
        $s2 = "bdvl.so"
        $s3 = "bedevil.so"
    condition:
        filename matches /^(bdvl|bedevil)\.so(\..*)?$/ or (uint32(0) == 0x464c457f and any of them)
}

rule Rootkit_Suterusu
{
    meta:
        description = "Suterusu LKM rootkit (module name and hook names)"
        author = "vmscope"
        severity = "critical"
        reference = "https://github.com/mncoppola/suterusu"
        date = "2025-01-01"
    strings:
        $name = "suterusu" nocase
        $h1 = "hijack_start"
        $h2 = "hijack_stop"
        $h3 = "hide_proc"
        $h4 = "hide_tcp4_port"
    condition:
        uint32(0) == 0x464c457f and ($name or 3 of ($h*))
}
