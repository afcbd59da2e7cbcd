/* midway: a dummy that leaves in the middle of an injection
 * (testdata/inject/build.sh; inject's TestLiveGuest/dummy-gone).
 *
 * Usage: midway exit|exec
 * The main thread returns to user mode every 200 ms (a candidate inject
 * accepts). A second thread reads the main thread's blocked-signal mask
 * (SigBlk of /proc/self/task/PID/status) every 20 ms; once it changes
 * (inject blocks every signal with its first call), it waits 300 ms and
 * then, with "exit", ends the process (exit_group), or, with "exec",
 * execs /bin/sleep 600 (which kills the main thread, the borrowed one).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char mode[8];
static char path[64];

static unsigned long sigblk(void)
{
	char line[128];
	unsigned long v = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, "SigBlk:", 7) == 0)
			v = strtoul(line + 7, NULL, 16);
	fclose(f);
	return v;
}

static void *watcher(void *arg)
{
	(void)arg;
	struct timespec tick = {0, 20 * 1000 * 1000}, wait = {0, 300 * 1000 * 1000};
	unsigned long first = sigblk();
	while (sigblk() == first)
		nanosleep(&tick, NULL);
	nanosleep(&wait, NULL);
	if (strcmp(mode, "exec") == 0) {
		char *argv[] = {"sleep", "600", NULL};
		execv("/bin/sleep", argv);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 2 || (strcmp(argv[1], "exit") && strcmp(argv[1], "exec")))
		return 2;
	strcpy(mode, argv[1]);
	snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)getpid());
	pthread_t t;
	if (pthread_create(&t, NULL, watcher, NULL))
		return 1;
	struct timespec ts = {0, 200 * 1000 * 1000};
	for (;;)
		nanosleep(&ts, NULL);
}
