// PHP and JSP web shells: request data flowing straight into code
// execution. Each string needs the request superglobal (or
// request.getParameter) as the argument, which legitimate code does not do.

rule WebShell_PHP_Eval_Request
{
    meta:
        description = "PHP code evaluating request data (eval/assert of $_POST/$_GET/$_REQUEST/$_COOKIE, possibly decoded first)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $php = "<?"
        $eval_direct = /\b(eval|assert)\s*\(\s*(stripslashes\s*\(\s*)?\$_(POST|GET|REQUEST|COOKIE)\b/ nocase
        $eval_decoded = /\b(eval|assert)\s*\(\s*(base64_decode|gzinflate|gzuncompress|gzdecode|str_rot13|hex2bin)\s*\(\s*\$_(POST|GET|REQUEST|COOKIE)\b/ nocase
        $eval_chain = /\b(eval|assert)\s*\(\s*(base64_decode|gzinflate|gzuncompress|str_rot13)\s*\(\s*(base64_decode|gzinflate|gzuncompress|str_rot13)\s*\(\s*\$_(POST|GET|REQUEST|COOKIE)\b/ nocase
        $create_func = /\bcreate_function\s*\([^)]{0,64}\$_(POST|GET|REQUEST|COOKIE)\b/ nocase
        $preg_e = /\bpreg_replace\s*\(\s*["'][^"'\n]{1,128}\/[a-zA-Z]{0,5}e[a-zA-Z]{0,5}["']\s*,\s*\$_(POST|GET|REQUEST|COOKIE)\b/ nocase
    condition:
        filesize < 5MB and $php and any of ($eval*, $create_func, $preg_e)
}

rule WebShell_PHP_Exec_Request
{
    meta:
        description = "PHP code passing request data to a shell (system/exec/shell_exec/passthru/popen/proc_open/backticks)"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $php = "<?"
        $exec = /\b(system|exec|shell_exec|passthru|popen|proc_open|pcntl_exec)\s*\(\s*(base64_decode\s*\(\s*)?\$_(POST|GET|REQUEST|COOKIE)\s*\[/ nocase
        $backtick = /`\s*\$_(POST|GET|REQUEST|COOKIE)\s*\[[^\]]{1,32}\]\s*`/
    condition:
        filesize < 5MB and $php and any of ($exec, $backtick)
}

rule WebShell_JSP_Runtime_Exec_Request
{
    meta:
        description = "JSP page executing a command taken from a request parameter"
        author = "vmscope"
        severity = "critical"
        date = "2025-01-01"
    strings:
        $jsp = "<%"
        $exec = /Runtime\s*\.\s*getRuntime\s*\(\s*\)\s*\.\s*exec\s*\(\s*request\s*\.\s*getParameter\s*\(/
        $pb = /new\s+ProcessBuilder\s*\([^;]{0,128}request\s*\.\s*getParameter\s*\(/
    condition:
        filesize < 5MB and $jsp and any of ($exec, $pb)
}
