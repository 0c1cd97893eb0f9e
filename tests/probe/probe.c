/*
 * nsrun's in-sandbox probe: a static binary the confinement tests run inside a sandbox.
 *
 * It makes raw syscalls with harmless arguments (bad flags, null pointers, invalid fds, as
 * bubblewrap's try-syscall does) and prints what the kernel or the seccomp filter answered, one
 * line per attempt, so the Rust tests can check every answer. It is C, built with `gcc -static`
 * by scripts/build-probe.sh, because it must run in any rootfs (busybox, distroless, scratch)
 * without a libc of the image and must issue syscalls libc does not wrap.
 *
 * Modes:
 *   probe syscalls          NAME ERRNO per probed syscall (ERRNO "0" on success)
 *   probe escape [HOSTPID]  "blocked NAME ERRNO" or "ESCAPED NAME DETAIL" per attempt; exit 1 if any escaped
 *   probe ids               uid/euid and capability sets of this process
 *   probe forkbomb MAX      forks (children pause) until fork fails or MAX; prints "forked N ERRNO"
 *   probe memhog MIB        allocates and touches MIB MiB, 1 MiB at a time; prints progress
 *   probe fill PATH         writes PATH 1 MiB at a time until a write fails; prints "fill BYTES ERRNO"
 *   probe mkdir PATH        prints "mkdir ERRNO"
 *   probe udpecho PORT N    binds UDP 0.0.0.0:PORT, prints "ready", answers N datagrams with
 *                           "echo:" and the datagram (busybox has no UDP server to publish)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef __NR_clone3
#define __NR_clone3 435
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_open_tree
#define __NR_open_tree 428
#endif
#ifndef __NR_fsopen
#define __NR_fsopen 430
#endif

/* errno names, so the output does not depend on the libc's strerror texts. */
static const char *ename(int e)
{
	switch (e) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EINTR: return "EINTR";
	case EIO: return "EIO";
	case EBADF: return "EBADF";
	case ECHILD: return "ECHILD";
	case EAGAIN: return "EAGAIN";
	case ENOMEM: return "ENOMEM";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case EEXIST: return "EEXIST";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case EINVAL: return "EINVAL";
	case ENOSPC: return "ENOSPC";
	case EROFS: return "EROFS";
	case ENOSYS: return "ENOSYS";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
	case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
	case EDQUOT: return "EDQUOT";
	case ENODEV: return "ENODEV";
	case ENXIO: return "ENXIO";
	case ENOEXEC: return "ENOEXEC";
	case E2BIG: return "E2BIG";
	default: {
		static char buf[32];
		snprintf(buf, sizeof buf, "E%d", e);
		return buf;
	}
	}
}

/* Result of a raw syscall as an errno (0 on success); closes a returned fd. */
static int rc_fd(long rc)
{
	if (rc < 0)
		return errno;
	close((int)rc);
	return 0;
}

static int rc_plain(long rc)
{
	return rc < 0 ? errno : 0;
}

/* ---- probe syscalls --------------------------------------------------------------------- */

struct sysprobe {
	const char *name;
	int (*fn)(void);
};

static int s_getpid(void) { return rc_plain(syscall(SYS_getpid)); }
static int s_mkdir_null(void) { return rc_plain(syscall(SYS_mkdirat, AT_FDCWD, NULL, 0700)); }
static int s_mount(void) { return rc_plain(syscall(SYS_mount, "none", "/nonexistent-probe", "tmpfs", 0, NULL)); }
static int s_umount2(void) { return rc_plain(syscall(SYS_umount2, "/nonexistent-probe", 0)); }
static int s_pivot_root(void) { return rc_plain(syscall(SYS_pivot_root, NULL, NULL)); }
static int s_unshare(void) { return rc_plain(syscall(SYS_unshare, 0x80000000UL)); }
static int s_setns(void) { return rc_plain(syscall(SYS_setns, -1, 0)); }
static int s_keyctl(void) { return rc_plain(syscall(SYS_keyctl, 0xdead, 0, 0, 0, 0)); }
static int s_add_key(void) { return rc_plain(syscall(SYS_add_key, NULL, NULL, NULL, 0, 0)); }
static int s_request_key(void) { return rc_plain(syscall(SYS_request_key, NULL, NULL, NULL, 0)); }
static int s_bpf(void) { return rc_plain(syscall(SYS_bpf, -1, NULL, 0)); }
static int s_perf_event_open(void) { return rc_fd(syscall(SYS_perf_event_open, NULL, -1, -1, -1, 0)); }
static int s_kexec_load(void) { return rc_plain(syscall(SYS_kexec_load, 0, 0, NULL, -1UL)); }
static int s_init_module(void) { return rc_plain(syscall(SYS_init_module, NULL, 0, NULL)); }
static int s_finit_module(void) { return rc_plain(syscall(SYS_finit_module, -1, NULL, 0)); }
static int s_open_by_handle_at(void) { return rc_fd(syscall(SYS_open_by_handle_at, -1, NULL, 0)); }
static int s_userfaultfd(void) { return rc_fd(syscall(SYS_userfaultfd, 0xffffffffUL)); }
static int s_reboot(void) { return rc_plain(syscall(SYS_reboot, 0, 0, 0, NULL)); }
static int s_swapon(void) { return rc_plain(syscall(SYS_swapon, NULL, 0)); }
static int s_ptrace(void) { return rc_plain(syscall(SYS_ptrace, 0xdead, 0, NULL, NULL)); }
static int s_clone_newuser(void)
{
	/* CLONE_NEWUSER with CLONE_FS is invalid: EINVAL if it reaches the kernel, never a child. */
	long rc = syscall(SYS_clone, CLONE_NEWUSER | CLONE_FS, NULL, NULL, NULL, 0);
	if (rc == 0)
		_exit(0);
	return rc_plain(rc);
}
static int s_clone3(void) { return rc_plain(syscall(__NR_clone3, NULL, 0)); }
static int s_io_uring_setup(void) { return rc_fd(syscall(__NR_io_uring_setup, 0, NULL)); }
static int s_open_tree(void) { return rc_fd(syscall(__NR_open_tree, -1, NULL, 0)); }
static int s_fsopen(void) { return rc_fd(syscall(__NR_fsopen, NULL, 0)); }
static int s_chroot(void) { return rc_plain(syscall(SYS_chroot, "/nonexistent-probe")); }
static int s_socket_raw(void) { return rc_fd(syscall(SYS_socket, AF_INET, SOCK_RAW, 1)); }
static int s_socket_packet(void) { return rc_fd(syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0)); }
static int s_socket_vsock(void) { return rc_fd(syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0)); }
static int s_socket_inet(void) { return rc_fd(syscall(SYS_socket, AF_INET, SOCK_STREAM, 0)); }

static const struct sysprobe sysprobes[] = {
	{"getpid", s_getpid},
	{"mkdir", s_mkdir_null},
	{"socket_inet", s_socket_inet},
	{"mount", s_mount},
	{"umount2", s_umount2},
	{"pivot_root", s_pivot_root},
	{"unshare", s_unshare},
	{"setns", s_setns},
	{"clone_newuser", s_clone_newuser},
	{"clone3", s_clone3},
	{"keyctl", s_keyctl},
	{"add_key", s_add_key},
	{"request_key", s_request_key},
	{"bpf", s_bpf},
	{"perf_event_open", s_perf_event_open},
	{"kexec_load", s_kexec_load},
	{"init_module", s_init_module},
	{"finit_module", s_finit_module},
	{"open_by_handle_at", s_open_by_handle_at},
	{"userfaultfd", s_userfaultfd},
	{"reboot", s_reboot},
	{"swapon", s_swapon},
	{"ptrace", s_ptrace},
	{"io_uring_setup", s_io_uring_setup},
	{"open_tree", s_open_tree},
	{"fsopen", s_fsopen},
	{"chroot", s_chroot},
	{"socket_raw", s_socket_raw},
	{"socket_packet", s_socket_packet},
	{"socket_vsock", s_socket_vsock},
};

static int mode_syscalls(void)
{
	for (size_t i = 0; i < sizeof sysprobes / sizeof sysprobes[0]; i++) {
		errno = 0;
		printf("%s %s\n", sysprobes[i].name, ename(sysprobes[i].fn()));
	}
	return 0;
}

/* ---- probe escape ----------------------------------------------------------------------- */

static int escaped;

/* An attempt is blocked when it failed with an errno; `what` says what succeeding meant. */
static void verdict(const char *name, int err, const char *what)
{
	if (err) {
		printf("blocked %s %s\n", name, ename(err));
	} else {
		printf("ESCAPED %s %s\n", name, what);
		escaped = 1;
	}
}

static void verdict_eperm(const char *name, int err)
{
	/* Calls whose failure must come from a permission check (seccomp or capabilities), not
	 * from the bad argument we passed. */
	if (err == EPERM || err == EACCES || err == ENOSYS)
		printf("blocked %s %s\n", name, ename(err));
	else {
		printf("ESCAPED %s reached the kernel's argument checks (%s)\n", name, ename(err));
		escaped = 1;
	}
}

/* Read at most a few bytes; a masked file (bound to /dev/null or an empty tmpfs) reads 0. */
static void try_read_masked(const char *name, const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		verdict(name, errno, "");
		return;
	}
	char buf[16];
	ssize_t n = read(fd, buf, sizeof buf);
	int e = n < 0 ? errno : 0;
	close(fd);
	if (n <= 0)
		printf("blocked %s %s\n", name, n == 0 ? "masked" : ename(e));
	else {
		printf("ESCAPED %s read %zd bytes of %s\n", name, n, path);
		escaped = 1;
	}
}

static int try_open_write(const char *path)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static int mode_escape(const char *hostpid)
{
	/* The root filesystem is read-only. */
	{
		int fd = open("/nsrun-escape-probe", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		int e = fd < 0 ? errno : 0;
		if (fd >= 0) {
			close(fd);
			unlink("/nsrun-escape-probe");
		}
		verdict("write_root", e, "created /nsrun-escape-probe");
	}
	verdict("mkdir_root", mkdir("/nsrun-escape-dir", 0700) < 0 ? errno : (rmdir("/nsrun-escape-dir"), 0),
		"created /nsrun-escape-dir");
	verdict("mount_tmpfs", mount("tmpfs", "/tmp", "tmpfs", 0, "size=1m") < 0 ? errno : 0,
		"mounted a tmpfs on /tmp");
	verdict("remount_root_rw", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL) < 0 ? errno : 0,
		"remounted / read-write");
	verdict("unshare_user", unshare(CLONE_NEWUSER) < 0 ? errno : 0, "entered a new user namespace");
	verdict("unshare_mount", unshare(CLONE_NEWNS) < 0 ? errno : 0, "entered a new mount namespace");
	{
		int fd = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
		int e;
		if (fd < 0)
			e = errno;
		else {
			e = setns(fd, 0) < 0 ? errno : 0;
			close(fd);
		}
		verdict("setns", e, "joined a mount namespace");
	}
	verdict("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp") < 0 ? errno : 0, "pivoted the root");
	try_read_masked("read_kcore", "/proc/kcore");
	try_read_masked("read_keys", "/proc/keys");
	try_read_masked("read_timer_list", "/proc/timer_list");
	verdict("write_sysrq_trigger", try_open_write("/proc/sysrq-trigger"), "opened /proc/sysrq-trigger for writing");
	verdict("write_proc_sys", try_open_write("/proc/sys/kernel/hostname"), "opened /proc/sys/kernel/hostname for writing");
	verdict("write_sys", mkdir("/sys/fs/nsrun-escape-probe", 0700) < 0 ? errno : (rmdir("/sys/fs/nsrun-escape-probe"), 0),
		"created a directory under /sys");
	verdict("write_sys_file", try_open_write("/sys/kernel/uevent_helper"), "opened /sys/kernel/uevent_helper for writing");
	verdict_eperm("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 1) < 0 ? errno : 0);
	{
		char attr[128];
		memset(attr, 0, sizeof attr);
		long rc = syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, attr, sizeof attr);
		verdict_eperm("bpf", rc < 0 ? errno : (close((int)rc), 0));
	}
	{
		char attr[128]; /* struct perf_event_attr, software cpu-clock */
		memset(attr, 0, sizeof attr);
		((unsigned int *)attr)[0] = 1;   /* type = PERF_TYPE_SOFTWARE */
		((unsigned int *)attr)[1] = 128; /* size */
		long rc = syscall(SYS_perf_event_open, attr, 0, -1, -1, 0);
		verdict_eperm("perf_event_open", rc < 0 ? errno : (close((int)rc), 0));
	}
	/* Bad magic: EINVAL would mean the call got past seccomp and the capability check. */
	verdict_eperm("reboot", syscall(SYS_reboot, 0, 0, 0, NULL) < 0 ? errno : 0);
	verdict_eperm("init_module", syscall(SYS_init_module, "", 0, "") < 0 ? errno : 0);
	verdict_eperm("finit_module", syscall(SYS_finit_module, 0, "", 0) < 0 ? errno : 0);
	verdict_eperm("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0) < 0 ? errno : 0);
	verdict("raw_socket", rc_fd(syscall(SYS_socket, AF_INET, SOCK_RAW, 1)), "opened a raw ICMP socket");
	verdict("packet_socket", rc_fd(syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0)), "opened a packet socket");
	verdict("vsock_socket", rc_fd(syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0)), "opened a vsock socket");
	{
		struct { unsigned int bytes; int type; unsigned char h[8]; } fh = {8, 1, {0}};
		int root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		verdict_eperm("open_by_handle_at", rc_fd(syscall(SYS_open_by_handle_at, root, &fh, O_RDONLY)));
		if (root >= 0)
			close(root);
	}
	verdict_eperm("ptrace_init", syscall(SYS_ptrace, PTRACE_ATTACH, 1, NULL, NULL) < 0 ? errno : 0);
	verdict("mknod_null", mknod("/tmp/nsrun-null", S_IFCHR | 0600, makedev(1, 3)) < 0 ? errno : (unlink("/tmp/nsrun-null"), 0),
		"created a character device");
	verdict_eperm("io_uring_setup", rc_fd(syscall(__NR_io_uring_setup, 1, NULL)));
	verdict_eperm("userfaultfd", rc_fd(syscall(SYS_userfaultfd, 0)));
	verdict_eperm("swapon", syscall(SYS_swapon, "/tmp/none", 0) < 0 ? errno : 0);
	{
		/* ENOSYS, so libcs fall back to clone, whose flags seccomp can see. */
		long rc = syscall(__NR_clone3, NULL, 0);
		if (rc < 0 && errno == ENOSYS)
			printf("blocked clone3 ENOSYS\n");
		else {
			printf("ESCAPED clone3 reached the kernel (%s)\n", rc < 0 ? ename(errno) : "0");
			escaped = 1;
		}
	}
	{
		long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, 0);
		if (rc == 0)
			_exit(0);
		if (rc > 0)
			waitpid((pid_t)rc, NULL, 0);
		verdict("clone_newuser", rc < 0 ? errno : 0, "cloned into a new user namespace");
	}
	if (hostpid) {
		/* A host process must be out of reach: invisible in our pid namespace. */
		long pid = strtol(hostpid, NULL, 10);
		verdict("kill_host_process", kill((pid_t)pid, SIGTERM) < 0 ? errno : 0, "signalled a host pid");
	}
	{
		int fd = open("/proc/1/exe", O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && getpid() != 1) {
			close(fd);
			printf("ESCAPED open_init_exe opened /proc/1/exe of the sandbox's init\n");
			escaped = 1;
		} else
			printf("blocked open_init_exe %s\n", fd < 0 ? ename(errno) : "self");
	}
	/* Last: a chroot that worked would change what every later path means. */
	verdict("chroot", chroot("/tmp") < 0 ? errno : 0, "chrooted");
	fflush(stdout);
	return escaped;
}

/* ---- probe ids -------------------------------------------------------------------------- */

/* PR_CAPBSET_READ: 1 if in the bounding set, 0 if not, -1 past the last capability. */
static int prctl_capbset(int cap)
{
	long r = syscall(SYS_prctl, 23 /* PR_CAPBSET_READ */, cap, 0, 0, 0);
	return r < 0 ? -1 : (int)r;
}

static int mode_ids(void)
{
	struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof d);
	if (syscall(SYS_capget, &h, d) < 0) {
		printf("capget %s\n", ename(errno));
		return 1;
	}
	unsigned long long eff = d[0].effective | ((unsigned long long)d[1].effective << 32);
	unsigned long long prm = d[0].permitted | ((unsigned long long)d[1].permitted << 32);
	unsigned long long bnd = 0;
	for (int c = 0; c < 64; c++) {
		int r = prctl_capbset(c);
		if (r < 0)
			break;
		if (r)
			bnd |= 1ULL << c;
	}
	printf("uid %d euid %d gid %d egid %d\n", getuid(), geteuid(), getgid(), getegid());
	printf("eff %016llx prm %016llx bnd %016llx\n", eff, prm, bnd);
	printf("nnp %d\n", (int)syscall(SYS_prctl, 39 /* PR_GET_NO_NEW_PRIVS */, 0, 0, 0, 0));
	return 0;
}

/* ---- resource limits -------------------------------------------------------------------- */

static int mode_forkbomb(long max)
{
	static pid_t kids[100000];
	long n = 0;
	int err = 0;
	if (max > 100000)
		max = 100000;
	while (n < max) {
		pid_t pid = fork();
		if (pid == 0) {
			pause();
			_exit(0);
		}
		if (pid < 0) {
			err = errno;
			break;
		}
		kids[n++] = pid;
	}
	printf("forked %ld %s\n", n, ename(err));
	fflush(stdout);
	/* Reap them ourselves: outside a pid namespace nothing else would. */
	for (long i = 0; i < n; i++)
		kill(kids[i], SIGKILL);
	for (long i = 0; i < n; i++)
		waitpid(kids[i], NULL, 0);
	return 0;
}

/* Spread processes over several uids: per uid, a leader switches to it and forks `per` children
 * that wait. RLIMIT_NPROC counts per uid, so a tool that may change uid gets the limit once per
 * uid; a pids cgroup counts them all. Prints the total started and why switching failed. */
static int mode_uidbomb(long uids, long per)
{
	int fds[2];
	if (pipe(fds) < 0)
		return 1;
	int setuid_err = 0;
	long total = 0;
	for (long u = 0; u < uids; u++) {
		pid_t leader = fork();
		if (leader < 0)
			break;
		if (leader == 0) {
			uid_t id = (uid_t)(u * 1000);
			long n = 0;
			int err = 0;
			if (setresgid(id, id, id) < 0 || setresuid(id, id, id) < 0)
				err = errno;
			if (!err) {
				for (; n < per; n++) {
					pid_t k = fork();
					if (k == 0) {
						sleep(5);
						_exit(0);
					}
					if (k < 0)
						break;
				}
			}
			long msg[2] = { n, err };
			write(fds[1], msg, sizeof msg);
			sleep(5); /* keep the children counted while the parent sums up */
			_exit(0);
		}
		long msg[2];
		if (read(fds[0], msg, sizeof msg) == sizeof msg) {
			total += msg[0] + 1;
			if (msg[1])
				setuid_err = (int)msg[1];
		}
	}
	printf("uidbomb %ld %s\n", total, ename(setuid_err));
	fflush(stdout);
	kill(-1, SIGKILL);
	return 0;
}

static int mode_memhog(long mib)
{
	for (long i = 1; i <= mib; i++) {
		char *p = malloc(1 << 20);
		if (!p) {
			printf("memhog malloc failed at %ld MiB\n", i);
			return 2;
		}
		memset(p, (int)i, 1 << 20);
		if (i % 16 == 0) {
			printf("memhog %ld MiB\n", i);
			fflush(stdout);
		}
	}
	printf("memhog done %ld MiB\n", mib);
	return 0;
}

static int mode_fill(const char *path)
{
	static char buf[1 << 20];
	memset(buf, 'x', sizeof buf);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		printf("fill 0 %s\n", ename(errno));
		return 1;
	}
	long long total = 0;
	int err = 0;
	for (;;) {
		ssize_t n = write(fd, buf, sizeof buf);
		if (n < 0) {
			err = errno;
			break;
		}
		if (n == 0)
			break;
		total += n;
		if (total > (16LL << 30))
			break; /* no limit at all: stop at 16 GiB */
	}
	close(fd);
	unlink(path);
	printf("fill %lld %s\n", total, ename(err));
	return 0;
}

static int mode_udpecho(long port, long count)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		printf("udpecho %s\n", ename(errno));
		return 1;
	}
	printf("ready\n");
	for (long i = 0; i < count; i++) {
		char buf[1500];
		memcpy(buf, "echo:", 5);
		struct sockaddr_in from;
		socklen_t len = sizeof from;
		ssize_t n = recvfrom(fd, buf + 5, sizeof buf - 5, 0, (struct sockaddr *)&from, &len);
		if (n < 0)
			return 1;
		sendto(fd, buf, (size_t)n + 5, 0, (struct sockaddr *)&from, len);
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "syscalls"))
		return mode_syscalls();
	if (!strcmp(mode, "escape"))
		return mode_escape(argc > 2 ? argv[2] : NULL);
	if (!strcmp(mode, "ids"))
		return mode_ids();
	if (!strcmp(mode, "forkbomb"))
		return mode_forkbomb(argc > 2 ? strtol(argv[2], NULL, 10) : 100000);
	if (!strcmp(mode, "uidbomb"))
		return mode_uidbomb(argc > 2 ? strtol(argv[2], NULL, 10) : 4,
				    argc > 3 ? strtol(argv[3], NULL, 10) : 12);
	if (!strcmp(mode, "memhog"))
		return mode_memhog(argc > 2 ? strtol(argv[2], NULL, 10) : 1024);
	if (!strcmp(mode, "fill") && argc > 2)
		return mode_fill(argv[2]);
	if (!strcmp(mode, "mkdir") && argc > 2) {
		printf("mkdir %s\n", ename(mkdir(argv[2], 0700) < 0 ? errno : 0));
		return 0;
	}
	if (!strcmp(mode, "udpecho") && argc > 3)
		return mode_udpecho(strtol(argv[2], NULL, 10), strtol(argv[3], NULL, 10));
	fprintf(stderr, "usage: probe syscalls|escape [HOSTPID]|ids|forkbomb MAX|uidbomb UIDS PER|memhog MIB|fill PATH|mkdir PATH|udpecho PORT N\n");
	return 2;
}
