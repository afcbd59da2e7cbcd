// Cryptocurrency miners: XMRig-style configuration files and miner
// binaries.

rule Miner_XMRig_Config
{
    meta:
        description = "XMRig-style miner configuration (JSON with \"pools\" and a stratum URL or \"donate-level\")"
        author = "vmscope"
        severity = "high"
        reference = "https://xmrig.com/docs/miner/config"
        date = "2025-01-01"
    strings:
        $pools = "\"pools\""
        $url = "\"url\""
        $stratum = /stratum\+(tcp|ssl|tls):\/\//
        $donate = "\"donate-level\""
        $algo = /"algo"\s*:\s*"(rx|cn|argon2|kawpow|ghostrider)/
    condition:
        filesize < 1MB and $pools and $url and ($stratum or $donate or $algo)
}

rule Miner_Binary_Strings
{
    meta:
        description = "Executable carrying a known CPU miner's identity (XMRig, xmr-stak, cpuminer/minerd) and the stratum protocol"
        author = "vmscope"
        severity = "high"
        date = "2025-01-01"
    strings:
        $stratum = "stratum+tcp://"
        $n1 = "XMRig/" ascii
        $n2 = "xmrig.com" ascii
        $n3 = "xmr-stak" ascii nocase
        $n4 = "cpuminer" ascii
        $n5 = "minerd" ascii fullword
        $n6 = "mining.subscribe" ascii
    condition:
        (uint32(0) == 0x464c457f or uint16(0) == 0x5a4d) and $stratum and any of ($n*)
}

rule Miner_Known_File_Name
{
    meta:
        description = "File named like a known miner or miner dropper (xmrig, xmr-stak, kdevtmpfsi, kinsing)"
        author = "vmscope"
        severity = "high"
        date = "2025-01-01"
    condition:
        filename == "xmrig" or filename == "xmrig.json" or filename == "xmr-stak" or
        filename == "kdevtmpfsi" or filename == "kinsing"
}
