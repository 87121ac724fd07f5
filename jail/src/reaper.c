/*
 * berth-reaper: what PID 1 of a Berth jail becomes once the payload runs.
 *
 * berth-init sets the jail up and forks the payload, then execs this
 * program (embedded in berth-init, run from a sealed memfd). A Rust
 * process with glibc keeps about 130 KiB of private pages (ld.so and libc
 * data, heap, stack) and page tables for them for the jail's whole life;
 * this one keeps a page of stack and a page of code. It does only what
 * init does from then on:
 *
 *   - forwards TERM, INT, HUP, USR1, USR2 and QUIT to the payload;
 *   - reaps every child (orphans are reparented to PID 1);
 *   - when the payload ends, writes its exit record to the status fd,
 *     `{"code":C,"signal":S|null}` (serde_json of jail::ExitRecord, the
 *     bytes init wrote), fsyncs it when asked (not on tmpfs), and exits
 *     with the payload's code (128 + signal when it was killed).
 *
 *   argv: berth-init <payload pid> <status fd> <fsync: 0|1>
 *
 * The signals arrive blocked and possibly pending: init blocked them
 * before it forked the payload, and execve(2) keeps the signal mask and
 * pending signals. A blocked signal is never dropped as ignored, even for
 * the init of a pid namespace with the default disposition (the kernel's
 * sig_ignored()), so they are taken with rt_sigtimedwait and no handler
 * is needed.
 *
 * No libc: raw system calls for x86_64, aarch64 and 32-bit ARM (EABI),
 * whose signal numbers are the generic ones. Built by jail/build.rs with
 * -nostdlib -static.
 */

#if defined(__x86_64__)
#define NR_WRITE 1
#define NR_FSYNC 74
#define NR_KILL 62
#define NR_WAIT4 61
#define NR_EXIT_GROUP 231
#define NR_RT_SIGPROCMASK 14
#define NR_RT_SIGTIMEDWAIT 128
#define NR_PRCTL 157
#elif defined(__aarch64__)
#define NR_WRITE 64
#define NR_FSYNC 82
#define NR_KILL 129
#define NR_WAIT4 260
#define NR_EXIT_GROUP 94
#define NR_RT_SIGPROCMASK 135
#define NR_RT_SIGTIMEDWAIT 137
#define NR_PRCTL 167
#elif defined(__arm__) && defined(__ARM_EABI__)
#define NR_WRITE 4
#define NR_FSYNC 118
#define NR_KILL 37
#define NR_WAIT4 114
#define NR_EXIT_GROUP 248
#define NR_RT_SIGPROCMASK 175
#define NR_RT_SIGTIMEDWAIT 177
#define NR_PRCTL 172
#else
#error "berth-reaper: unsupported architecture"
#endif

#define SIGHUP 1
#define SIGINT 2
#define SIGQUIT 3
#define SIGUSR1 10
#define SIGUSR2 12
#define SIGTERM 15
#define SIGCHLD 17
#define SIG_BLOCK 0
#define WNOHANG 1
#define ECHILD 10
#define EINTR 4
#define PR_SET_NAME 15

static long sys4(long n, long a, long b, long c, long d)
{
#if defined(__x86_64__)
	register long r10 __asm__("r10") = d;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
			 : "rcx", "r11", "memory");
	return ret;
#elif defined(__aarch64__)
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3)
			 : "memory");
	return x0;
#else
	register long r7 __asm__("r7") = n;
	register long r0 __asm__("r0") = a;
	register long r1 __asm__("r1") = b;
	register long r2 __asm__("r2") = c;
	register long r3 __asm__("r3") = d;
	__asm__ volatile("svc 0"
			 : "+r"(r0)
			 : "r"(r7), "r"(r1), "r"(r2), "r"(r3)
			 : "memory");
	return r0;
#endif
}

/* The kernel's sigset_t: 64 signals on all three architectures. */
typedef unsigned long long ksigset;

static ksigset bit(int sig)
{
	return 1ULL << (sig - 1);
}

static int parse(const char *s)
{
	int v = 0;
	if (!s || !*s)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9' || v > 100000000)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}

/* Decimal of 0..999 (codes and signals), without a division: 32-bit ARM
 * has no divide instruction and there is no libgcc here. */
static char *put_int(char *p, int v)
{
	int h = 0, t = 0;
	while (v >= 100) {
		v -= 100;
		h++;
	}
	while (v >= 10) {
		v -= 10;
		t++;
	}
	if (h)
		*p++ = (char)('0' + h);
	if (h || t)
		*p++ = (char)('0' + t);
	*p++ = (char)('0' + v);
	return p;
}

static char *put_str(char *p, const char *s)
{
	while (*s)
		*p++ = *s++;
	return p;
}

static void finish(int fd, int sync, int code, int sig)
{
	char buf[64];
	char *p = put_str(buf, "{\"code\":");
	p = put_int(p, code);
	p = put_str(p, ",\"signal\":");
	p = sig ? put_int(p, sig) : put_str(p, "null");
	*p++ = '}';
	if (fd >= 0) {
		char *q = buf;
		while (q < p) {
			long n = sys4(NR_WRITE, fd, (long)q, p - q, 0);
			if (n == -EINTR)
				continue;
			if (n <= 0)
				break;
			q += n;
		}
		if (sync)
			sys4(NR_FSYNC, fd, 0, 0, 0);
	}
	sys4(NR_EXIT_GROUP, code & 0xff, 0, 0, 0);
	for (;;)
		;
}

/* Called from _start with the initial stack: argc, argv[], NULL, envp[]. */
__attribute__((used, noreturn)) void reaper_main(long *sp)
{
	int argc = (int)sp[0];
	char **argv = (char **)(sp + 1);
	int child, fd, sync;
	ksigset fwd = bit(SIGTERM) | bit(SIGINT) | bit(SIGHUP) | bit(SIGUSR1) |
		      bit(SIGUSR2) | bit(SIGQUIT);
	ksigset all = fwd | bit(SIGCHLD);

	if (argc < 4)
		finish(-1, 0, 125, 0);
	child = parse(argv[1]);
	fd = parse(argv[2]);
	sync = argv[3][0] == '1';
	if (child <= 0 || fd < 0)
		finish(-1, 0, 125, 0);
	sys4(NR_PRCTL, PR_SET_NAME, (long)"berth-init", 0, 0);
	/* Already blocked by init; block again in case the caller did not. */
	sys4(NR_RT_SIGPROCMASK, SIG_BLOCK, (long)&all, 0, sizeof(ksigset));

	for (;;) {
		/* Reap first: the payload may have ended before the exec. */
		for (;;) {
			int status = 0;
			long pid = sys4(NR_WAIT4, -1, (long)&status, WNOHANG, 0);
			if (pid == -EINTR)
				continue;
			if (pid <= 0) {
				/* No child left, yet the payload's end was
				 * never seen (a wrong pid): end rather than
				 * wait forever. */
				if (pid == -ECHILD)
					finish(fd, sync, 125, 0);
				break;
			}
			if (pid != child)
				continue;
			if ((status & 0x7f) == 0)
				finish(fd, sync, (status >> 8) & 0xff, 0);
			if ((status & 0x7f) != 0x7f)
				finish(fd, sync, 128 + (status & 0x7f), status & 0x7f);
		}
		long sig = sys4(NR_RT_SIGTIMEDWAIT, (long)&all, 0, 0, sizeof(ksigset));
		if (sig > 0 && sig != SIGCHLD && (fwd & bit((int)sig)))
			sys4(NR_KILL, child, sig, 0, 0);
	}
}

/*
 * Entry: hand the initial stack pointer to reaper_main with the stack
 * aligned as the ABI wants for a call.
 */
#if defined(__x86_64__)
__asm__(".text\n"
	".global _start\n"
	".type _start, %function\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call reaper_main\n"
	"	hlt\n");
#elif defined(__aarch64__)
__asm__(".text\n"
	".global _start\n"
	".type _start, %function\n"
	"_start:\n"
	"	mov x29, #0\n"
	"	mov x30, #0\n"
	"	mov x0, sp\n"
	"	bl reaper_main\n"
	"	b .\n");
#else
__asm__(".text\n"
	".global _start\n"
	".type _start, %function\n"
#if defined(__thumb__)
	".thumb_func\n"
#endif
	"_start:\n"
	"	mov r0, sp\n"
	"	mov r1, sp\n"
	"	bic r1, r1, #7\n"
	"	mov sp, r1\n"
	"	bl reaper_main\n"
	"	b .\n");
#endif
