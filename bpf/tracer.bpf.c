// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bpfarm's tracer: process exec/exit/fork, file opens and network connects,
 * streamed to userspace through one ring buffer.
 *
 * One source, two build modes:
 *  - kernel headers (default): the kernel's own headers, Tracee-style, so
 *    struct offsets are those of exactly the kernel the object is built for;
 *  - BTF (BPFARM_BTF defined): a vmlinux.h generated from the kernel's BTF.
 *
 * Attach points exist without kprobes: raw tracepoints for the scheduler
 * events, syscall tracepoints for open/connect. The one kprobe program
 * (commit_creds) is optional: a loader attaches it where kprobes exist and
 * reports it skipped elsewhere.
 */
#ifdef BPFARM_BTF
#include "vmlinux.h"
#else
#include <linux/types.h>
#include <uapi/linux/bpf.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/cred.h>
#include <linux/binfmts.h>
/* struct pt_regs only: <linux/ptrace.h> would add pid_namespace.h and mm.h,
 * about 40 % of clang's time here, for types no program reads. */
#include <asm/ptrace.h>
#endif

#include "bpfarm_helpers.h"
#include "tracer.h"

#define BPFARM_AF_INET 2
#define BPFARM_AF_INET6 10

/*
 * The kernel fields the programs read, with the types the reads assume.
 * READ_KERN copies sizeof(dst) bytes, so a field that changed type (as
 * task_struct::state did in 5.14, or a char * turning into a struct pointer)
 * would compile and read garbage; this makes every such change a build
 * failure, in both modes, for every kernel. All of them hold from 5.10 to
 * 7.3 (kernels/debian.toml); a kernel that changes one gets a
 * LINUX_VERSION_CODE branch here and in the program that reads it.
 */
#define BPFARM_FIELD(type, field, ftype)                                               \
	_Static_assert(__builtin_types_compatible_p(__typeof__(((type *)0)->field), ftype), \
		       #type "::" #field " is not " #ftype)
BPFARM_FIELD(struct task_struct, real_parent, struct task_struct *);
BPFARM_FIELD(struct task_struct, tgid, int);
BPFARM_FIELD(struct task_struct, pid, int);
BPFARM_FIELD(struct task_struct, signal, struct signal_struct *);
BPFARM_FIELD(struct task_struct, exit_code, int);
BPFARM_FIELD(struct signal_struct, live.counter, int);
BPFARM_FIELD(struct linux_binprm, filename, const char *);
BPFARM_FIELD(struct cred, uid.val, unsigned int);
BPFARM_FIELD(struct cred, gid.val, unsigned int);

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Readable by the loader (libbpf maps .rodata): which program version this is. */
const char bpfarm_tracer_version[] = TRACER_VERSION;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Events that did not fit in the ring buffer, per CPU; the agent sums them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_events SEC(".maps");

/* Stable layout of syscall tracepoint records (tracefs `format` files): an
 * 8-byte common header, the syscall number, then each argument as 8 bytes. */
struct syscall_enter_ctx {
	__u64 common;
	__s32 syscall_nr;
	__u32 _pad;
	__u64 args[6];
};

static __always_inline_ void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost_events, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline_ void *reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);
	if (!e)
		count_lost();
	return e;
}

/* Fill the common header from the current task. */
static __always_inline_ void fill_header(struct bpfarm_event_header *h, __u32 type)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct task_struct *parent = 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	int ppid = 0;

	READ_KERN(parent, task->real_parent);
	if (parent)
		READ_KERN(ppid, parent->tgid);

	h->ts_ns = bpf_ktime_get_ns();
	h->type = type;
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = ppid;
	h->uid = (__u32)uid_gid;
	h->gid = uid_gid >> 32;
	bpf_get_current_comm(h->comm, sizeof(h->comm));
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
SEC("raw_tracepoint/sched_process_exec")
int bpfarm_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	const char *filename = 0;
	struct bpfarm_exec_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, BPFARM_EVENT_EXEC);
	READ_KERN(filename, bprm->filename);
	e->filename[0] = 0;
	if (filename)
		bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), filename);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* sched_process_exit(struct task_struct *p, ...): reported once per process,
 * when its last thread exits (signal->live has dropped to zero by then). */
SEC("raw_tracepoint/sched_process_exit")
int bpfarm_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct signal_struct *signal = 0;
	int live = 1, code = 0;
	struct bpfarm_exit_event *e;

	READ_KERN(signal, task->signal);
	if (signal)
		READ_KERN(live, signal->live.counter);
	if (live != 0)
		return 0;
	e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, BPFARM_EVENT_EXIT);
	READ_KERN(code, task->exit_code);
	e->exit_code = (code >> 8) & 0xff;
	e->signal = code & 0x7f;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* sched_process_fork(struct task_struct *parent, struct task_struct *child):
 * new processes only, not new threads. */
SEC("raw_tracepoint/sched_process_fork")
int bpfarm_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	int pid = 0, tgid = 0;
	struct bpfarm_fork_event *e;

	READ_KERN(pid, child->pid);
	READ_KERN(tgid, child->tgid);
	if (pid != tgid)
		return 0;
	e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, BPFARM_EVENT_FORK);
	e->child_pid = tgid;
	e->child_tid = pid;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline_ int emit_open(__s64 dfd, const char *path, __u64 flags, __u64 mode)
{
	struct bpfarm_open_event *e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, BPFARM_EVENT_OPEN);
	e->dfd = (__s32)dfd;
	e->flags = (__u32)flags;
	e->mode = (__u32)mode;
	e->_pad = 0;
	e->path[0] = 0;
	bpf_probe_read_user_str(e->path, sizeof(e->path), path);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* openat(int dfd, const char *filename, int flags, umode_t mode) */
SEC("tracepoint/syscalls/sys_enter_openat")
int bpfarm_openat(struct syscall_enter_ctx *ctx)
{
	return emit_open(ctx->args[0], (const char *)ctx->args[1], ctx->args[2], ctx->args[3]);
}

/* openat2(int dfd, const char *filename, struct open_how *how, size_t size):
 * how = { u64 flags; u64 mode; u64 resolve; } in user memory. */
SEC("tracepoint/syscalls/sys_enter_openat2")
int bpfarm_openat2(struct syscall_enter_ctx *ctx)
{
	__u64 how[2] = {0, 0};
	bpf_probe_read_user(how, sizeof(how), (const void *)ctx->args[2]);
	return emit_open(ctx->args[0], (const char *)ctx->args[1], how[0], how[1]);
}

/* connect(int fd, struct sockaddr *uservaddr, int addrlen): the address is
 * read from user memory; only IPv4 and IPv6 destinations are reported. */
SEC("tracepoint/syscalls/sys_enter_connect")
int bpfarm_connect(struct syscall_enter_ctx *ctx)
{
	/* sockaddr_in: family@0 port@2 addr@4; sockaddr_in6: family@0 port@2 addr@8 */
	__u8 sa[24] = {};
	__u16 family;
	struct bpfarm_connect_event *e;

	if (bpf_probe_read_user(sa, sizeof(sa), (const void *)ctx->args[1]) != 0)
		return 0;
	family = sa[0] | (sa[1] << 8);
	if (family != BPFARM_AF_INET && family != BPFARM_AF_INET6)
		return 0;
	e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, BPFARM_EVENT_CONNECT);
	e->fd = (__s32)ctx->args[0];
	e->family = family;
	e->port = (sa[2] << 8) | sa[3];
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	if (family == BPFARM_AF_INET)
		__builtin_memcpy(e->addr, &sa[4], 4);
	else
		__builtin_memcpy(e->addr, &sa[8], 16);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Optional: commit_creds(struct cred *new) where kprobes exist. */
#if defined(__TARGET_ARCH_x86)
#define BPFARM_PARM1(regs) ((regs)->di)
#elif defined(__TARGET_ARCH_arm64)
#define BPFARM_PARM1(regs) ((regs)->regs[0])
#else
#error "unsupported __TARGET_ARCH"
#endif

SEC("kprobe/commit_creds")
int bpfarm_commit_creds(struct pt_regs *regs)
{
	struct cred *new = (struct cred *)BPFARM_PARM1(regs);
	__u32 uid = 0, gid = 0;
	struct bpfarm_creds_event *e;

	READ_KERN(uid, new->uid.val);
	READ_KERN(gid, new->gid.val);
	e = reserve(sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->hdr, BPFARM_EVENT_CREDS);
	e->new_uid = uid;
	e->new_gid = gid;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
