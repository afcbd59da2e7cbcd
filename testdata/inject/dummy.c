/* dummy: the injection fixture's dummy process (testdata/inject/build.sh).
 *
 * Each second it sleeps in nanosleep(2) with check values in every
 * callee-saved register (rbx, rbp, r12-r15) and in 4 KiB of its own stack,
 * then checks them all and writes "DUMMY OK n" (or "DUMMY CORRUPT what")
 * to the file named by argv[1] (default stdout). A dummy whose registers or
 * stack an injection left altered says so within a second. Built static
 * with Debian's gcc, so its text holds its own `syscall` instructions.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define V_RBX 0x1b1b1b1b1b1b1b1bUL
#define V_RBP 0x1e1e1e1e1e1e1e1eUL
#define V_R12 0x1212121212121212UL
#define V_R13 0x1313131313131313UL
#define V_R14 0x1414141414141414UL
#define V_R15 0x1515151515151515UL

/* one sleep with the check values live across the system call; returns a
 * bit mask of the registers that changed */
static __attribute__((noinline)) unsigned long sleep_checked(const struct timespec *ts)
{
	unsigned long bad;
	__asm__ volatile(
		"push %%rbp\n\t"
		"movabs $0x1b1b1b1b1b1b1b1b, %%rbx\n\t"
		"movabs $0x1e1e1e1e1e1e1e1e, %%rbp\n\t"
		"movabs $0x1212121212121212, %%r12\n\t"
		"movabs $0x1313131313131313, %%r13\n\t"
		"movabs $0x1414141414141414, %%r14\n\t"
		"movabs $0x1515151515151515, %%r15\n\t"
		"mov $35, %%eax\n\t"          /* nanosleep */
		"xor %%esi, %%esi\n\t"
		"syscall\n\t"
		"xor %%ecx, %%ecx\n\t"
		"movabs $0x1b1b1b1b1b1b1b1b, %%rdx\n\t"
		"cmp %%rdx, %%rbx\n\t" "je 1f\n\t" "or $1, %%rcx\n"
		"1:\n\t"
		"movabs $0x1e1e1e1e1e1e1e1e, %%rdx\n\t"
		"cmp %%rdx, %%rbp\n\t" "je 2f\n\t" "or $2, %%rcx\n"
		"2:\n\t"
		"movabs $0x1212121212121212, %%rdx\n\t"
		"cmp %%rdx, %%r12\n\t" "je 3f\n\t" "or $4, %%rcx\n"
		"3:\n\t"
		"movabs $0x1313131313131313, %%rdx\n\t"
		"cmp %%rdx, %%r13\n\t" "je 4f\n\t" "or $8, %%rcx\n"
		"4:\n\t"
		"movabs $0x1414141414141414, %%rdx\n\t"
		"cmp %%rdx, %%r14\n\t" "je 5f\n\t" "or $16, %%rcx\n"
		"5:\n\t"
		"movabs $0x1515151515151515, %%rdx\n\t"
		"cmp %%rdx, %%r15\n\t" "je 6f\n\t" "or $32, %%rcx\n"
		"6:\n\t"
		"pop %%rbp\n\t"
		: "=c"(bad)
		: "D"(ts)
		: "rax", "rbx", "rdx", "rsi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "memory", "cc");
	return bad;
}

static __attribute__((noinline)) int stack_round(int fd, unsigned long n)
{
	volatile unsigned long area[512]; /* 4 KiB of check values on the stack */
	for (int i = 0; i < 512; i++)
		area[i] = 0xd0d0d0d000000000UL ^ ((unsigned long)i * 0x9e3779b97f4a7c15UL);
	struct timespec ts = {1, 0};
	unsigned long bad = sleep_checked(&ts);
	int badStack = -1;
	for (int i = 0; i < 512; i++)
		if (area[i] != (0xd0d0d0d000000000UL ^ ((unsigned long)i * 0x9e3779b97f4a7c15UL))) {
			badStack = i;
			break;
		}
	char line[128];
	int l;
	if (bad || badStack >= 0)
		l = snprintf(line, sizeof line, "DUMMY CORRUPT regs=%#lx stack=%d after %lu\n", bad, badStack, n);
	else
		l = snprintf(line, sizeof line, "DUMMY OK %lu\n", n);
	return write(fd, line, l) == l;
}

int main(int argc, char **argv)
{
	int fd = 1;
	if (argc > 1 && (fd = open(argv[1], O_WRONLY | O_APPEND | O_NOCTTY)) < 0)
		return 1;
	for (unsigned long n = 1;; n++)
		stack_round(fd, n);
}
