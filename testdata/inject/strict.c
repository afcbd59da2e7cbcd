/* strict: a process in seccomp strict mode (testdata/inject/build.sh). It
 * turns strict mode on and blocks in read(2) on its stdin: any other system
 * call, such as one an injector would make it run, kills it. vmscope inject
 * must refuse it as a dummy. */
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <sys/syscall.h>

int main(void)
{
	char c;
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
		return 1;
	for (;;)
		if (syscall(SYS_read, 0, &c, 1) <= 0)
			syscall(SYS_exit, 0);
}
