/*
 * cfi-plugin: a QEMU TCG plugin that reports, per vCPU, the transitions
 * between kernel code pages (virtual address >= 0xffff800000000000) to
 * vmscope over a unix socket (vmscope cfi learn|monitor --source plugin).
 * GPL-2.0-or-later, as QEMU's plugin API.
 *
 * QEMU loads it with -plugin PATH,sock=SOCKET. The plugin listens on
 * SOCKET and serves one client at a time. Only translation blocks that
 * start in the kernel half get an execution callback; it compares the
 * block's page with the vCPU's last kernel page and, on a change, records
 * the edge (from, to) in a table of the distinct edges seen since QEMU
 * started. An edge is sent to the client the first time it happens for
 * that client, so the volume is the number of distinct edges, not of
 * transitions.
 *
 * A client first sends one byte: 'A' (replay every edge seen since QEMU
 * started, then the new ones) or 'N' (every edge from now on, once each,
 * even those seen before). Each message is 32 bytes, little-endian:
 *   u32 magic 0x50494643 ("CFIP"), u32 vcpu, u64 from page, u64 to page,
 *   u64 host CLOCK_REALTIME in ns
 * with from = 0 for a vCPU's first kernel page. The first message is a
 * hello (vcpu 0xfffffffe, pages 0): from then on every edge reaches the
 * client. A replay message has vcpu 0xffffffff and time 0.
 *
 * Debian 12 does not package qemu-plugin.h: the declarations below are the
 * documented API of QEMU_PLUGIN_VERSION 1 (QEMU 4.2 to 8.x), the one of
 * Debian's QEMU 7.2.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* --- the plugin API (include/qemu/qemu-plugin.h, version 1) --- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
struct qemu_plugin_tb;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);
/* --- end of the API --- */

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

#define KERNEL_MIN 0xffff800000000000ULL
#define PAGE_MASK (~0xfffULL)
#define MAX_VCPUS 256
#define TABLE_BITS 20 /* distinct edges kept: 1M (24 MiB) */
#define MAGIC 0x50494643u
#define REPLAY 0xffffffffu
#define HELLO 0xfffffffeu

struct edge {
    uint64_t from, to; /* to == 0: empty slot */
    uint32_t gen;
};

struct msg {
    uint32_t magic, vcpu;
    uint64_t from, to, ns;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct edge *table;
static size_t used;
static uint32_t gen = 1;
static int client = -1;
static int listener = -1;
static char sock_path[108];
static uint64_t last[MAX_VCPUS];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* send_msg writes one message to the client; on failure the client is
 * dropped. Called with mu held. */
static void send_msg(uint32_t vcpu, uint64_t from, uint64_t to, uint64_t ns)
{
    struct msg m = {MAGIC, vcpu, from, to, ns};
    const char *p = (const char *)&m;
    size_t n = sizeof m;
    while (client >= 0 && n > 0) {
        ssize_t w = send(client, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            close(client);
            client = -1;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static size_t slot_of(uint64_t from, uint64_t to)
{
    uint64_t h = (from * 0x9E3779B97F4A7C15ull) ^ (to * 0xC2B2AE3D27D4EB4Full);
    return (size_t)(h >> (64 - TABLE_BITS));
}

/* record notes the edge and sends it when it is new to the client. */
static void record(unsigned int vcpu, uint64_t from, uint64_t to)
{
    pthread_mutex_lock(&mu);
    size_t mask = ((size_t)1 << TABLE_BITS) - 1;
    size_t i = slot_of(from, to);
    bool report = true;
    for (size_t probes = 0; probes <= mask; probes++, i = (i + 1) & mask) {
        struct edge *e = &table[i];
        if (e->to == 0) {
            if (used < mask - (mask >> 3)) { /* keep 1/8 free: probes stay short */
                e->from = from;
                e->to = to;
                e->gen = gen;
                used++;
            }
            break;
        }
        if (e->from == from && e->to == to) {
            report = e->gen != gen;
            e->gen = gen;
            break;
        }
    }
    if (report && client >= 0) {
        send_msg(vcpu, from, to, now_ns());
    }
    pthread_mutex_unlock(&mu);
}

static void vcpu_tb_exec(unsigned int vcpu, void *udata)
{
    uint64_t page = (uint64_t)(uintptr_t)udata;
    uint64_t *l = &last[vcpu % MAX_VCPUS];
    if (*l == page) {
        return;
    }
    uint64_t from = *l;
    *l = page;
    record(vcpu, from, page);
}

static void vcpu_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    uint64_t va = qemu_plugin_tb_vaddr(tb);
    if (va < KERNEL_MIN) {
        return;
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, vcpu_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                         (void *)(uintptr_t)(va & PAGE_MASK));
}

/* serve accepts clients one at a time. */
static void *serve(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(listener, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return NULL;
        }
        char mode = 0;
        if (read(c, &mode, 1) != 1 || (mode != 'A' && mode != 'N')) {
            close(c);
            continue;
        }
        int sz = 4 << 20;
        setsockopt(c, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        pthread_mutex_lock(&mu);
        if (client >= 0) {
            close(client);
        }
        client = c;
        send_msg(HELLO, 0, 0, 0);
        if (mode == 'N') {
            gen++;
        } else {
            for (size_t i = 0; i < ((size_t)1 << TABLE_BITS) && client >= 0; i++) {
                if (table[i].to != 0) {
                    send_msg(REPLAY, table[i].from, table[i].to, 0);
                }
            }
        }
        pthread_mutex_unlock(&mu);
        /* wait for the client to go, then accept the next */
        char buf[64];
        while (read(c, buf, sizeof buf) > 0) {
        }
        pthread_mutex_lock(&mu);
        if (client == c) {
            close(client);
            client = -1;
        }
        pthread_mutex_unlock(&mu);
    }
}

static void at_exit(qemu_plugin_id_t id, void *p)
{
    (void)id;
    (void)p;
    unlink(sock_path);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (!info->system_emulation) {
        qemu_plugin_outs("cfi-plugin: system emulation only\n");
        return -1;
    }
    if (info->version.cur < 1 || info->version.min > 1) {
        qemu_plugin_outs("cfi-plugin: QEMU's plugin API is not version 1\n");
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "sock=", 5) == 0 && strlen(argv[i] + 5) < sizeof sock_path) {
            strcpy(sock_path, argv[i] + 5);
        }
    }
    if (sock_path[0] == 0) {
        qemu_plugin_outs("cfi-plugin: want sock=PATH (shorter than 108 bytes)\n");
        return -1;
    }
    table = calloc((size_t)1 << TABLE_BITS, sizeof *table);
    if (table == NULL) {
        return -1;
    }
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, sock_path);
    unlink(sock_path);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(listener, 4) < 0) {
        qemu_plugin_outs("cfi-plugin: cannot listen on the socket\n");
        return -1;
    }
    pthread_t th;
    if (pthread_create(&th, NULL, serve, NULL) != 0) {
        return -1;
    }
    pthread_detach(th);
    qemu_plugin_register_vcpu_tb_trans_cb(id, vcpu_tb_trans);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
