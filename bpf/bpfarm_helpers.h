/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few BPF helper declarations and section macros the tracer uses.
 *
 * Why not libbpf's bpf_helpers.h from the host: the object's bytes must
 * depend only on inputs the builder hashes into its cache key. Host headers
 * change with the host's libbpf-dev version; these do not. Helper ids come
 * from the kernel's own `enum bpf_func_id` (uapi linux/bpf.h in headers mode,
 * vmlinux.h in BTF mode), so nothing here is a magic number.
 */
#ifndef BPFARM_HELPERS_H
#define BPFARM_HELPERS_H

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline_ inline __attribute__((always_inline))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)BPF_FUNC_get_current_pid_tgid;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)BPF_FUNC_get_current_uid_gid;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)BPF_FUNC_get_current_comm;
static __u64 (*bpf_get_current_task)(void) = (void *)BPF_FUNC_get_current_task;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *src) = (void *)BPF_FUNC_probe_read_kernel;
static long (*bpf_probe_read_kernel_str)(void *dst, __u32 size, const void *src) = (void *)BPF_FUNC_probe_read_kernel_str;
static long (*bpf_probe_read_user)(void *dst, __u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user;
static long (*bpf_probe_read_user_str)(void *dst, __u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user_str;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)BPF_FUNC_ringbuf_reserve;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)BPF_FUNC_ringbuf_submit;

/* Read a kernel field into a local of the same type. In BTF mode vmlinux.h
 * marks every struct preserve_access_index, so this records a CO-RE
 * relocation; in headers mode the offset is the target kernel's, fixed at
 * compile time. Either way the object is built for one kernel. */
#define READ_KERN(dst, src) bpf_probe_read_kernel(&(dst), sizeof(dst), &(src))

#endif /* BPFARM_HELPERS_H */
