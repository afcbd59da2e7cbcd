package scan

// #cgo !yara_no_pkg_config,!yara_static  pkg-config: yara
// #cgo !yara_no_pkg_config,yara_static   pkg-config: --static yara
// #cgo yara_no_pkg_config                LDFLAGS:    -lyara -lm
// #include <yara.h>
// static const char* vmscope_yr_version(void) { return YR_VERSION; }
// static int vmscope_yr_arena_version(void) { return YR_ARENA_FILE_VERSION; }
import "C"

// LibyaraVersion is the version of the libyara vmscope is built with
// ("4.2.3").
var LibyaraVersion = C.GoString(C.vmscope_yr_version())

// CompiledRulesVersion is the format version of compiled rule files
// (`yarac` output) this libyara reads and writes: the one version byte
// after the "YARA" magic. libyara records nothing else of its version in
// the file.
var CompiledRulesVersion = int(C.vmscope_yr_arena_version())
