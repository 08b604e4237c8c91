/*
 * insn_count.c: a QEMU TCG plugin that counts executed guest instructions and snapshots the count
 * whenever the guest asks for it.
 *
 * Why: under emulation wall time is not ARM latency, but the number of aarch64 instructions the guest
 * retires is a property of the program and its inputs, so it stays true on a real core.
 *
 * How the guest asks: it makes a getpid() syscall whose first argument is MARK_MAGIC and whose second
 * argument is a label (edgecomp/bench/arm64_guest.py does this through ctypes). getpid ignores its
 * arguments, so the marker has no effect on the guest. At exit the plugin writes one line per marker,
 * "<label> <instructions so far>", and a final "end <total>" to the file named by the `out=` argument.
 * Differences between markers give per-inference counts without counting interpreter start-up or model
 * loading, all from one qemu process.
 *
 * Counting: at translation time every translation block gets an inline "add n_insns" into one counter
 * (cheap: no helper call per block). The count is exact as long as blocks run to their end, which holds
 * except for the rare block left early by a fault/signal. Guest threads would race on the plain counter:
 * the runner uses one intra-op thread, so inference runs on one thread.
 *
 * Debian 12 ships no qemu-plugin.h, so the few entry points used here are declared below from QEMU's
 * documented plugin API (docs/devel/tcg-plugins.rst, API version 1 as in QEMU 7.2).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- QEMU plugin API (declarations only; the symbols are provided by qemu-aarch64) ---- */
#define PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;   /* only ever passed by pointer here */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1,
                             uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                             uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
/* ---- end of API declarations ---- */

PLUGIN_EXPORT int qemu_plugin_version = 1;

#define AARCH64_SYS_GETPID 172
#define MARK_MAGIC 0x45444745434f4dULL /* "EDGECOM" */
#define MAX_MARKS 4096

static uint64_t insn_count;
static uint64_t mark_label[MAX_MARKS];
static uint64_t mark_count[MAX_MARKS];
static int n_marks;
static char out_path[4096];

static void on_tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
                                             qemu_plugin_tb_n_insns(tb));
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num == AARCH64_SYS_GETPID && a1 == MARK_MAGIC && n_marks < MAX_MARKS) {
        mark_label[n_marks] = a2;
        mark_count[n_marks] = insn_count;
        n_marks++;
    }
}

static void write_counts(qemu_plugin_id_t id, void *userdata)
{
    FILE *f = out_path[0] ? fopen(out_path, "w") : stderr;
    if (!f) {
        perror("insn_count: cannot open out file");
        return;
    }
    for (int i = 0; i < n_marks; i++) {
        fprintf(f, "%" PRIu64 " %" PRIu64 "\n", mark_label[i], mark_count[i]);
    }
    fprintf(f, "end %" PRIu64 "\n", insn_count);
    if (f != stderr) {
        fclose(f);
    }
}

PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                      char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            snprintf(out_path, sizeof(out_path), "%s", argv[i] + 4);
        } else {
            fprintf(stderr, "insn_count: unknown argument %s (only out=PATH)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
