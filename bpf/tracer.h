/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The tracer's event layout: the one definition shared by the eBPF program
 * and the agent that decodes it (agent mirrors these structs and a test checks
 * the mirror against the BTF of a built object). Also the program's version.
 *
 * Every struct is naturally aligned, little-endian, with explicit padding, so
 * the layout is the same for x86_64 and arm64 objects.
 */
#ifndef BPFARM_TRACER_H
#define BPFARM_TRACER_H

/* The one place the program's version lives. The builder reads it as the
 * default `--version`; it is also compiled into the object's .rodata. */
#define TRACER_VERSION "v0.1.0"

#define BPFARM_COMM_LEN 16
#define BPFARM_PATH_LEN 256

enum bpfarm_event_type {
	BPFARM_EVENT_EXEC = 1,
	BPFARM_EVENT_EXIT = 2,
	BPFARM_EVENT_FORK = 3,
	BPFARM_EVENT_OPEN = 4,
	BPFARM_EVENT_CONNECT = 5,
	BPFARM_EVENT_CREDS = 6,
};

/* 48 bytes, at the start of every event. pid is the thread group id (what
 * userspace calls the pid), tid the thread id. */
struct bpfarm_event_header {
	__u64 ts_ns;
	__u32 type;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	char comm[BPFARM_COMM_LEN];
};

struct bpfarm_exec_event {
	struct bpfarm_event_header hdr;
	char filename[BPFARM_PATH_LEN];
};

struct bpfarm_exit_event {
	struct bpfarm_event_header hdr;
	__s32 exit_code; /* the status passed to exit(), 0..255 */
	__u32 signal;    /* the terminating signal, 0 if none */
};

struct bpfarm_fork_event {
	struct bpfarm_event_header hdr;
	__u32 child_pid;
	__u32 child_tid;
};

struct bpfarm_open_event {
	struct bpfarm_event_header hdr;
	__s32 dfd;
	__u32 flags;
	__u32 mode;
	__u32 _pad;
	char path[BPFARM_PATH_LEN];
};

struct bpfarm_connect_event {
	struct bpfarm_event_header hdr;
	__s32 fd;
	__u16 family; /* AF_INET (2) or AF_INET6 (10) */
	__u16 port;   /* host byte order */
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct bpfarm_creds_event {
	struct bpfarm_event_header hdr;
	__u32 new_uid;
	__u32 new_gid;
};

/* The offsets the agent decodes (agent/src/events.rs mirrors them, and a
 * test there compares its table with these lines). Every build, for every
 * kernel and both arches, fails if the layout drifts from them. */
#define BPFARM_AT(type, field, off) \
	_Static_assert(__builtin_offsetof(struct type, field) == off, #type "." #field " must be at byte " #off)
BPFARM_AT(bpfarm_event_header, ts_ns, 0);
BPFARM_AT(bpfarm_event_header, type, 8);
BPFARM_AT(bpfarm_event_header, pid, 12);
BPFARM_AT(bpfarm_event_header, tid, 16);
BPFARM_AT(bpfarm_event_header, ppid, 20);
BPFARM_AT(bpfarm_event_header, uid, 24);
BPFARM_AT(bpfarm_event_header, gid, 28);
BPFARM_AT(bpfarm_event_header, comm, 32);
BPFARM_AT(bpfarm_exec_event, filename, 48);
BPFARM_AT(bpfarm_exit_event, exit_code, 48);
BPFARM_AT(bpfarm_exit_event, signal, 52);
BPFARM_AT(bpfarm_fork_event, child_pid, 48);
BPFARM_AT(bpfarm_fork_event, child_tid, 52);
BPFARM_AT(bpfarm_open_event, dfd, 48);
BPFARM_AT(bpfarm_open_event, flags, 52);
BPFARM_AT(bpfarm_open_event, mode, 56);
BPFARM_AT(bpfarm_open_event, path, 64);
BPFARM_AT(bpfarm_connect_event, fd, 48);
BPFARM_AT(bpfarm_connect_event, family, 52);
BPFARM_AT(bpfarm_connect_event, port, 54);
BPFARM_AT(bpfarm_connect_event, addr, 56);
BPFARM_AT(bpfarm_creds_event, new_uid, 48);
BPFARM_AT(bpfarm_creds_event, new_gid, 52);

#endif /* BPFARM_TRACER_H */
