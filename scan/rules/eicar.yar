rule EICAR_Test_File
{
    meta:
        description = "EICAR anti-virus test file"
        author = "vmscope"
        severity = "low"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"
        date = "2025-01-01"
    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    condition:
        $eicar
}
