// A program with PAD bytes of initialized read-only data placed before the
// structures YARA's pe and elf modules parse (built by build.sh with
// mingw-w64 and gcc).
#include <stdio.h>
#ifdef _WIN32
#include <windows.h>
#endif

// Non-zero at both ends so no toolchain turns it into .bss; the marker
// string at the end is found by a plain string rule.
static const unsigned char pad[PAD] = {
    'p', 'a', 'd',
    [PAD - 32] = 'V', 'M', 'S', 'C', 'O', 'P', 'E', '-', 'P', 'A', 'D', '-', 'E', 'N', 'D',
};

int main(int argc, char **argv) {
  (void)argv;
#ifdef _WIN32
  if (argc > 5)
    MessageBoxA(NULL, "vmscope", "fixture", MB_OK);
  printf("%u %lu\n", pad[argc * 4099 % PAD], GetTickCount());
#else
  printf("%u\n", pad[argc * 4099 % PAD]);
#endif
  return 0;
}
