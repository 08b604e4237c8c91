/*
 * edgecomp-probe: load one artifact through its runtime's C API, run it, and print what the process paid.
 *
 * Why a C program: a Python process that imports onnxruntime peaks at ~47 MB before any model is loaded,
 * which hides most of what a smaller model saves. An Android app runs ORT Mobile or LiteRT from C++/Java
 * without an interpreter; this probe pays what such a process pays: libc + the runtime + the model.
 *
 *   edgecomp-probe --lib LIB --model PATH --inputs FEEDS --outputs OUT [--runs N] [--warmup N]
 *                  [--threads N] [--signature KEY] [--option KEY=VALUE]... [--checkpoints DIR]
 *
 * .onnx/.ort run on ONNX Runtime (LIB = libonnxruntime.so), .tflite on LiteRT's CompiledModel on XNNPACK
 * (LIB = libLiteRt.so). The library is dlopen'ed: no header or import library ships with either wheel,
 * so only the entry points used here are declared, from the public ABI:
 *   - ONNX Runtime: OrtGetApiBase()->GetApi(v) returns the OrtApi table, function pointers in the fixed
 *     order of onnxruntime_c_api.h; the table only ever grows at its end, so the index of an entry is the
 *     same in every release that has it (ORT_INDEX below, checked against the headers of API 14 and 29).
 *   - LiteRT: plain exported C functions (the headers under litert/c/); CPU options travel as opaque options with the
 *     identifier "xnnpack" and a TOML payload, which is how litert_cpu_options.cc builds them.
 *
 * FEEDS and OUT use one small format (edgecomp/bench/native.py writes and reads it):
 *   "EDGEPROBE 1\n" "<n>\n" then per tensor "<name> <dtype> <rank> <d0> ... <dk>\n", then "DATA\n" and
 *   the tensors' raw little-endian bytes in the same order. dtype: float32, int32, int64.
 *
 * Options (--option, repeatable):
 *   load=path|bytes|mmap   how the model reaches the runtime: by path (the runtime reads it), as a heap
 *                          copy, or as a read-only mmap of the file; bytes/mmap buffers live until the
 *                          session is released (ORT's use_ort_model_bytes_directly requires it)
 *   keep_bytes=0           drop the bytes/mmap buffer right after the session is created (to show why
 *                          use_ort_model_bytes_directly crashed from Python: its buffer was a temporary)
 *   ORT:    arena=0|1 (CPU memory arena), mem_pattern=0|1, opt_level=0|1|2|99, custom_ops=LIBRARY (a custom-op
 *           library registered before the session is made, e.g. edgecomp's libedgecomp_ops.so), and any
 *           session config key (session.disable_prepacking=1, session.use_ort_model_bytes_directly=1, ...)
 *   LiteRT: weight_cache=PATH|:memory|none (XNNPACK weight cache; default :memory)
 *
 * Output: one JSON object on stdout. Memory at checkpoints (start = library loaded, loaded = session
 * ready, first_run, runs = after the timed runs) from /proc/self/smaps_rollup (rss, anon, file = rss -
 * anon - shmem, shmem: memfd-backed, e.g. XNNPACK's in-memory weight cache), and the peak (VmHWM).
 * With --checkpoints DIR each checkpoint also writes the process's /proc/self/maps to
 * DIR/NN-label.maps and stops with SIGSTOP: under qemu-aarch64 that view lists only guest mappings, so
 * the host can measure guest memory without the emulator's (edgecomp/bench/arm64.py). The same
 * getpid(MARK_MAGIC, label) markers as arm64_guest.py let the insn_count plugin count instructions per run.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_TENSORS 256 /* a .tflite with adapter slots takes an R per adapted Linear (MiniLM, 6 roles: 41 inputs) */
#define MAX_RANK 8
#define MAX_OPTIONS 32
#define MAX_RUNS 100000
#define MARK_MAGIC 0x45444745434F4DLL /* must match insn_count.c */
#define LABEL_START 1000001
#define LABEL_LOADED 1000002

/* ------------------------------------------------------------------------------------------------ */
/* common                                                                                           */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("edgecomp-probe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

typedef enum { DT_FLOAT32, DT_INT32, DT_INT64 } dtype_t;
static const char *DT_NAMES[] = {"float32", "int32", "int64"};
static const size_t DT_SIZES[] = {4, 4, 8};

typedef struct {
    char name[128];
    dtype_t dtype;
    int rank;
    int64_t dims[MAX_RANK];
    size_t count;
    void *data; /* 64-byte aligned: LiteRT host buffers require LITERT_HOST_MEMORY_BUFFER_ALIGNMENT */
} tensor_t;

typedef struct {
    int n;
    tensor_t t[MAX_TENSORS];
} tensors_t;

static void *aligned(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) die("out of memory (%zu bytes)", bytes);
    return p;
}

static size_t nbytes(const tensor_t *t) { return t->count * DT_SIZES[t->dtype]; }

static void read_tensors(const char *path, tensors_t *ts) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open inputs %s: %s", path, strerror(errno));
    int version = 0;
    if (fscanf(f, "EDGEPROBE %d\n", &version) != 1 || version != 1) die("%s is not an EDGEPROBE 1 file", path);
    if (fscanf(f, "%d\n", &ts->n) != 1 || ts->n < 1 || ts->n > MAX_TENSORS) die("%s: bad tensor count", path);
    for (int i = 0; i < ts->n; i++) {
        tensor_t *t = &ts->t[i];
        char dt[16];
        if (fscanf(f, "%127s %15s %d", t->name, dt, &t->rank) != 3 || t->rank < 0 || t->rank > MAX_RANK)
            die("%s: bad header for tensor %d", path, i);
        int known = 0;
        for (int k = 0; k < 3; k++)
            if (!strcmp(dt, DT_NAMES[k])) { t->dtype = (dtype_t)k; known = 1; }
        if (!known) die("%s: tensor %s has unsupported dtype %s", path, t->name, dt);
        t->count = 1;
        for (int d = 0; d < t->rank; d++) {
            long long v;
            if (fscanf(f, "%lld", &v) != 1 || v < 0) die("%s: bad shape for %s", path, t->name);
            t->dims[d] = v;
            t->count *= (size_t)v;
        }
    }
    char marker[8];
    if (fscanf(f, "%7s", marker) != 1 || strcmp(marker, "DATA") || fgetc(f) != '\n') die("%s: no DATA marker", path);
    for (int i = 0; i < ts->n; i++) {
        tensor_t *t = &ts->t[i];
        t->data = aligned(nbytes(t));
        if (fread(t->data, 1, nbytes(t), f) != nbytes(t)) die("%s: truncated data for %s", path, t->name);
    }
    fclose(f);
}

static void write_tensors(const char *path, const tensors_t *ts) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) die("cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "EDGEPROBE 1\n%d\n", ts->n);
    for (int i = 0; i < ts->n; i++) {
        const tensor_t *t = &ts->t[i];
        fprintf(f, "%s %s %d", t->name, DT_NAMES[t->dtype], t->rank);
        for (int d = 0; d < t->rank; d++) fprintf(f, " %lld", (long long)t->dims[d]);
        fputc('\n', f);
    }
    fputs("DATA\n", f);
    for (int i = 0; i < ts->n; i++) fwrite(ts->t[i].data, 1, nbytes(&ts->t[i]), f);
    if (fclose(f)) die("writing %s failed", tmp);
    if (rename(tmp, path)) die("cannot rename %s: %s", tmp, strerror(errno));
}

static const tensor_t *find_tensor(const tensors_t *ts, const char *name) {
    for (int i = 0; i < ts->n; i++)
        if (!strcmp(ts->t[i].name, name)) return &ts->t[i];
    return NULL;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* getpid(MARK_MAGIC, label): a no-op for the process, a count snapshot for the qemu plugin */
static void mark(long label) { syscall(SYS_getpid, MARK_MAGIC, label); }

/* memory ------------------------------------------------------------------------------------------- */

typedef struct {
    long rss, anon, shmem;
} mem_t;

static long status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, n) && line[n] == ':') { v = atol(line + n + 1); break; }
    if (f) fclose(f);
    return v;
}

static mem_t read_mem(void) {
    mem_t m = {-1, -1, -1};
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Rss:", 4)) m.rss = atol(line + 4);
        else if (!strncmp(line, "Anonymous:", 10)) m.anon = atol(line + 10);
        else if (!strncmp(line, "Pss_Shmem:", 10)) m.shmem = atol(line + 10);
    }
    if (f) fclose(f);
    if (m.rss < 0) m.rss = status_kb("VmRSS"); /* kernels without smaps_rollup */
    return m;
}

/* Where the resident memory is, from /proc/self/smaps: file-backed pages of the runtime library, of the
 * model file and of other files (libc, libstdc++, ...); anonymous pages (heap, anonymous mmaps, and the
 * copy-on-write pages of file mappings); shmem (memfd, deleted files: XNNPACK's in-memory weight cache). */
typedef struct {
    long runtime_library, model_file, other_files, anon, shmem;
} where_t;

static where_t read_where(const char *lib_path, const char *model_path) {
    where_t w = {0, 0, 0, 0, 0};
    char lib[4096] = "", model[4096] = "", line[8192], path[4096];
    if (!realpath(lib_path, lib)) snprintf(lib, sizeof lib, "%s", lib_path);
    if (!realpath(model_path, model)) snprintf(model, sizeof model, "%s", model_path);
    FILE *f = fopen("/proc/self/smaps", "r");
    long rss = 0, anon = 0;
    int kind = -1; /* 0 library, 1 model, 2 other file, 3 anonymous, 4 shmem */
    for (;;) {
        char *got = f ? fgets(line, sizeof line, f) : NULL;
        size_t hex = got ? strspn(line, "0123456789abcdef") : 0;
        int header = hex > 0 && line[hex] == '-'; /* "start-end perms offset dev inode path" */
        if (!got || header) {
            if (kind >= 0) { /* close the previous mapping */
                long file_pages = rss - anon;
                w.anon += anon;
                if (kind == 0) w.runtime_library += file_pages;
                else if (kind == 1) w.model_file += file_pages;
                else if (kind == 2) w.other_files += file_pages;
                else if (kind == 4) w.shmem += file_pages;
            }
            if (!got) break;
            rss = anon = 0;
            path[0] = 0;
            sscanf(line, "%*s %*s %*s %*s %*s %4095[^\n]", path);
            kind = !path[0] || path[0] == '[' ? 3
                   : !strncmp(path, "/memfd:", 7) || strstr(path, "(deleted)") || !strncmp(path, "/dev/zero", 9) ? 4
                   : !strcmp(path, lib) ? 0 : !strcmp(path, model) ? 1 : 2;
        } else if (!strncmp(line, "Rss:", 4)) rss = atol(line + 4);
        else if (!strncmp(line, "Anonymous:", 10)) anon = atol(line + 10);
    }
    if (f) fclose(f);
    return w;
}

static const char *g_checkpoints;
static mem_t g_mem[4];
static const char *STAGES[] = {"start", "loaded", "first_run", "runs"};

static void checkpoint(int stage) {
    g_mem[stage] = read_mem();
    if (!g_checkpoints) return;
    char path[4096], tmp[4200], buf[65536];
    snprintf(path, sizeof path, "%s/%02d-%s.maps", g_checkpoints, stage, STAGES[stage]);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int in = open("/proc/self/maps", O_RDONLY), out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0) die("checkpoint %s: %s", path, strerror(errno));
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        if (write(out, buf, (size_t)n) != n) die("checkpoint %s: short write", path);
    close(in);
    close(out);
    if (rename(tmp, path)) die("checkpoint %s: %s", path, strerror(errno));
    raise(SIGSTOP); /* the host measures, then sends SIGCONT */
}

/* options ------------------------------------------------------------------------------------------ */

typedef struct {
    int n;
    char *key[MAX_OPTIONS], *value[MAX_OPTIONS];
    int used[MAX_OPTIONS];
} options_t;

static options_t g_opts;

static const char *opt(const char *key, const char *fallback) {
    for (int i = 0; i < g_opts.n; i++)
        if (!strcmp(g_opts.key[i], key)) { g_opts.used[i] = 1; return g_opts.value[i]; }
    return fallback;
}

/* the model file as a buffer (load=bytes: a heap copy; load=mmap: a read-only private mapping) */
typedef struct {
    void *data;
    size_t size;
    int mapped;
} model_bytes_t;

static model_bytes_t load_bytes(const char *path, const char *how) {
    model_bytes_t b = {NULL, 0, 0};
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) die("cannot open %s: %s", path, strerror(errno));
    b.size = (size_t)st.st_size;
    if (!strcmp(how, "mmap")) {
        b.data = mmap(NULL, b.size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (b.data == MAP_FAILED) die("mmap %s: %s", path, strerror(errno));
        b.mapped = 1;
    } else {
        b.data = aligned(b.size);
        size_t done = 0;
        while (done < b.size) {
            ssize_t n = read(fd, (char *)b.data + done, b.size - done);
            if (n <= 0) die("reading %s failed", path);
            done += (size_t)n;
        }
    }
    close(fd);
    return b;
}

static void free_bytes(model_bytes_t *b) {
    if (!b->data) return;
    if (b->mapped) munmap(b->data, b->size);
    else free(b->data);
    b->data = NULL;
}

/* keep_bytes=0: the buffer "goes away" right after the session is created, deterministically: a mapping
 * becomes inaccessible (any later read faults; a plain munmap could see the range reused by the next
 * allocation and read garbage instead), a heap copy is zeroed and freed */
static void release_bytes(model_bytes_t *b) {
    if (b->mapped) {
        if (mprotect(b->data, b->size, PROT_NONE)) die("mprotect: %s", strerror(errno));
        return;
    }
    memset(b->data, 0, b->size);
    free_bytes(b);
}

static void *sym(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) die("%s not found in the runtime library (%s)", name, dlerror());
    return p;
}

/* ------------------------------------------------------------------------------------------------ */
/* ONNX Runtime                                                                                     */

/* Index of each OrtApi entry used, in onnxruntime_c_api.h's order (0 = CreateStatus). */
enum {
    ORT_GetErrorMessage = 2, ORT_CreateEnv = 3, ORT_CreateSession = 7, ORT_CreateSessionFromArray = 8, ORT_Run = 9,
    ORT_CreateSessionOptions = 10, ORT_EnableMemPattern = 16, ORT_DisableMemPattern = 17,
    ORT_EnableCpuMemArena = 18, ORT_DisableCpuMemArena = 19, ORT_SetSessionLogSeverityLevel = 22,
    ORT_SetSessionGraphOptimizationLevel = 23, ORT_SetIntraOpNumThreads = 24, ORT_SetInterOpNumThreads = 25,
    ORT_RegisterCustomOpsLibrary = 29,
    ORT_SessionGetInputCount = 30, ORT_SessionGetOutputCount = 31, ORT_SessionGetInputTypeInfo = 33,
    ORT_SessionGetInputName = 36, ORT_SessionGetOutputName = 37, ORT_CreateTensorWithDataAsOrtValue = 49,
    ORT_GetTensorMutableData = 51, ORT_CastTypeInfoToTensorInfo = 55, ORT_GetTensorElementType = 60,
    ORT_GetDimensionsCount = 61, ORT_GetDimensions = 62, ORT_GetTensorTypeAndShape = 65,
    ORT_CreateCpuMemoryInfo = 69, ORT_AllocatorFree = 76, ORT_GetAllocatorWithDefaultOptions = 78,
    ORT_ReleaseEnv = 92, ORT_ReleaseStatus = 93, ORT_ReleaseMemoryInfo = 94, ORT_ReleaseSession = 95,
    ORT_ReleaseValue = 96, ORT_ReleaseTypeInfo = 98, ORT_ReleaseTensorTypeAndShapeInfo = 99,
    ORT_ReleaseSessionOptions = 100, ORT_AddSessionConfigEntry = 130,
};
/* Any API version that has every entry above (AddSessionConfigEntry came last, in API 5); GetApi of an
 * older version returns the same table. 14 = ONNX Runtime 1.14. */
#define ORT_API_VERSION_USED 14
enum { ONNX_FLOAT = 1, ONNX_INT32 = 6, ONNX_INT64 = 7 };

typedef void OrtStatus; /* all ORT objects are opaque here */
typedef struct {
    const void *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

static void *const *g_ort;
#define ORT_FN(type, idx) ((type)g_ort[idx])
typedef OrtStatus *(*st_fn)();

static void ort_check(OrtStatus *s, const char *what) {
    if (!s) return;
    const char *msg = ORT_FN(const char *(*)(const OrtStatus *), ORT_GetErrorMessage)(s);
    die("ONNX Runtime: %s failed: %s", what, msg);
}
#define ORT_CALL(name, ...) ort_check(((OrtStatus * (*)()) g_ort[ORT_##name])(__VA_ARGS__), #name)

static int onnx_dtype(dtype_t d) { return d == DT_FLOAT32 ? ONNX_FLOAT : d == DT_INT32 ? ONNX_INT32 : ONNX_INT64; }

static dtype_t from_onnx(int t) {
    if (t == ONNX_FLOAT) return DT_FLOAT32;
    if (t == ONNX_INT32) return DT_INT32;
    if (t == ONNX_INT64) return DT_INT64;
    die("ONNX Runtime: output element type %d is not float32/int32/int64", t);
    return DT_FLOAT32;
}

typedef struct {
    void *session, *env, *memory_info;
    size_t n_in, n_out;
    char *in_names[MAX_TENSORS], *out_names[MAX_TENSORS];
    void *in_values[MAX_TENSORS];
    model_bytes_t bytes;
    char version[64];
} ort_t;

static void ort_load(ort_t *o, void *lib, const char *model, int threads) {
    const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))sym(lib, "OrtGetApiBase");
    const OrtApiBase *base = get_base();
    snprintf(o->version, sizeof o->version, "%s", base->GetVersionString());
    g_ort = (void *const *)base->GetApi(ORT_API_VERSION_USED);
    if (!g_ort) die("ONNX Runtime %s does not offer API version %d", o->version, ORT_API_VERSION_USED);

    ORT_CALL(CreateEnv, 3 /* ORT_LOGGING_LEVEL_ERROR */, "edgecomp-probe", &o->env);
    void *so = NULL;
    ORT_CALL(CreateSessionOptions, &so);
    ORT_CALL(SetSessionLogSeverityLevel, so, 3);
    ORT_CALL(SetIntraOpNumThreads, so, threads);
    ORT_CALL(SetInterOpNumThreads, so, 1);
    if (!strcmp(opt("arena", "1"), "0")) ORT_CALL(DisableCpuMemArena, so);
    else ORT_CALL(EnableCpuMemArena, so);
    if (!strcmp(opt("mem_pattern", "1"), "0")) ORT_CALL(DisableMemPattern, so);
    else ORT_CALL(EnableMemPattern, so);
    ORT_CALL(SetSessionGraphOptimizationLevel, so, atoi(opt("opt_level", "99")));
    for (int i = 0; i < g_opts.n; i++)
        if (strchr(g_opts.key[i], '.')) { /* session.*, optimization.*, ...: ORT's own config keys */
            ORT_CALL(AddSessionConfigEntry, so, g_opts.key[i], g_opts.value[i]);
            g_opts.used[i] = 1;
        }
    const char *custom_ops = opt("custom_ops", NULL);
    if (custom_ops) { /* dlopen'ed by ORT, which calls its RegisterCustomOps(options, api_base); kept loaded */
        void *handle = NULL;
        ORT_CALL(RegisterCustomOpsLibrary, so, custom_ops, &handle);
    }
    const char *how = opt("load", "path");
    if (!strcmp(how, "path")) {
        ORT_CALL(CreateSession, o->env, model, so, &o->session);
    } else if (!strcmp(how, "bytes") || !strcmp(how, "mmap")) {
        o->bytes = load_bytes(model, how);
        ORT_CALL(CreateSessionFromArray, o->env, o->bytes.data, o->bytes.size, so, &o->session);
        if (!strcmp(opt("keep_bytes", "1"), "0")) release_bytes(&o->bytes);
    } else {
        die("load=%s: use path, bytes or mmap", how);
    }
    ORT_FN(void (*)(void *), ORT_ReleaseSessionOptions)(so);

    void *alloc = NULL;
    ORT_CALL(GetAllocatorWithDefaultOptions, &alloc);
    ORT_CALL(SessionGetInputCount, o->session, &o->n_in);
    ORT_CALL(SessionGetOutputCount, o->session, &o->n_out);
    if (o->n_in > MAX_TENSORS || o->n_out > MAX_TENSORS) die("more than %d inputs or outputs", MAX_TENSORS);
    for (size_t i = 0; i < o->n_in; i++) {
        char *name;
        ORT_CALL(SessionGetInputName, o->session, i, alloc, &name);
        o->in_names[i] = strdup(name);
        ORT_CALL(AllocatorFree, alloc, name);
    }
    for (size_t i = 0; i < o->n_out; i++) {
        char *name;
        ORT_CALL(SessionGetOutputName, o->session, i, alloc, &name);
        o->out_names[i] = strdup(name);
        ORT_CALL(AllocatorFree, alloc, name);
    }
    ORT_CALL(CreateCpuMemoryInfo, 0 /* OrtDeviceAllocator */, 0 /* OrtMemTypeDefault */, &o->memory_info);
}

static void ort_bind(ort_t *o, const tensors_t *feeds) {
    for (size_t i = 0; i < o->n_in; i++) {
        const tensor_t *t = find_tensor(feeds, o->in_names[i]);
        if (!t) die("the model needs input %s, which the inputs file lacks", o->in_names[i]);
        void *info = NULL;
        const void *tinfo = NULL;
        int want = 0;
        ORT_CALL(SessionGetInputTypeInfo, o->session, i, &info);
        ORT_CALL(CastTypeInfoToTensorInfo, info, &tinfo);
        ORT_CALL(GetTensorElementType, tinfo, &want);
        ORT_FN(void (*)(void *), ORT_ReleaseTypeInfo)(info);
        if (want != onnx_dtype(t->dtype)) die("input %s is %s, the model wants ONNX type %d", t->name, DT_NAMES[t->dtype], want);
        ORT_CALL(CreateTensorWithDataAsOrtValue, o->memory_info, t->data, nbytes(t), t->dims, (size_t)t->rank,
                 want, &o->in_values[i]);
    }
}

/* one inference; with `keep`, the outputs are copied into `out` */
static void ort_run(ort_t *o, tensors_t *out, int keep) {
    void *outs[MAX_TENSORS] = {0};
    ORT_CALL(Run, o->session, NULL, (const char *const *)o->in_names, (const void *const *)o->in_values, o->n_in,
             (const char *const *)o->out_names, o->n_out, outs);
    if (keep) {
        out->n = (int)o->n_out;
        for (size_t i = 0; i < o->n_out; i++) {
            tensor_t *t = &out->t[i];
            void *shape = NULL;
            int et = 0;
            size_t rank = 0;
            snprintf(t->name, sizeof t->name, "%s", o->out_names[i]);
            ORT_CALL(GetTensorTypeAndShape, outs[i], &shape);
            ORT_CALL(GetTensorElementType, shape, &et);
            ORT_CALL(GetDimensionsCount, shape, &rank);
            if (rank > MAX_RANK) die("output %s has rank %zu", t->name, rank);
            ORT_CALL(GetDimensions, shape, t->dims, rank);
            ORT_FN(void (*)(void *), ORT_ReleaseTensorTypeAndShapeInfo)(shape);
            t->rank = (int)rank;
            t->dtype = from_onnx(et);
            t->count = 1;
            for (size_t d = 0; d < rank; d++) t->count *= (size_t)t->dims[d];
            void *p = NULL;
            ORT_CALL(GetTensorMutableData, outs[i], &p);
            t->data = aligned(nbytes(t));
            memcpy(t->data, p, nbytes(t));
        }
    }
    for (size_t i = 0; i < o->n_out; i++) ORT_FN(void (*)(void *), ORT_ReleaseValue)(outs[i]);
}

/* ------------------------------------------------------------------------------------------------ */
/* LiteRT (CompiledModel on XNNPACK)                                                                */

typedef int LiteRtStatus; /* kLiteRtStatusOk = 0 */
typedef size_t LiteRtParamIndex;
typedef struct {
    unsigned int rank : 7;
    unsigned int has_strides : 1;
    int32_t dimensions[8];
    uint32_t strides[8];
} LiteRtLayout; /* 68 bytes, ABI stable (litert_layout.h asserts the offsets) */
typedef struct {
    int element_type;
    LiteRtLayout layout;
} LiteRtRankedTensorType;
enum { LRT_FLOAT32 = 1, LRT_INT32 = 2, LRT_INT64 = 4 };
enum { LRT_ACCEL_CPU = 1 };

static struct {
    LiteRtStatus (*CreateEnvironment)(int, const void *, void **);
    LiteRtStatus (*CreateModelFromFile)(void *, const char *, void **);
    LiteRtStatus (*CreateModelFromBuffer)(void *, const void *, size_t, void **);
    LiteRtStatus (*CreateOptions)(void **);
    LiteRtStatus (*SetOptionsHardwareAccelerators)(void *, int);
    LiteRtStatus (*CreateOpaqueOptions)(const char *, void *, void (*)(void *), void **);
    LiteRtStatus (*AddOpaqueOptions)(void *, void *);
    LiteRtStatus (*CreateCompiledModel)(void *, void *, void *, void **);
    LiteRtStatus (*GetNumModelSignatures)(void *, LiteRtParamIndex *);
    LiteRtStatus (*GetModelSignature)(void *, LiteRtParamIndex, void **);
    LiteRtStatus (*GetSignatureKey)(void *, const char **);
    LiteRtStatus (*GetNumSignatureInputs)(void *, LiteRtParamIndex *);
    LiteRtStatus (*GetNumSignatureOutputs)(void *, LiteRtParamIndex *);
    LiteRtStatus (*GetSignatureInputName)(void *, LiteRtParamIndex, const char **);
    LiteRtStatus (*GetSignatureOutputName)(void *, LiteRtParamIndex, const char **);
    LiteRtStatus (*GetSignatureInputTensorByIndex)(void *, LiteRtParamIndex, void **);
    LiteRtStatus (*GetSignatureOutputTensorByIndex)(void *, LiteRtParamIndex, void **);
    LiteRtStatus (*GetRankedTensorType)(void *, LiteRtRankedTensorType *);
    LiteRtStatus (*CreateTensorBufferFromHostMemory)(const LiteRtRankedTensorType *, void *, size_t, void (*)(void *), void **);
    LiteRtStatus (*RunCompiledModel)(void *, LiteRtParamIndex, size_t, void **, size_t, void **);
} lrt;

static void lrt_check(LiteRtStatus s, const char *what) {
    if (s) die("LiteRT: %s failed (status %d)", what, s);
}
#define LRT_CALL(name, ...) lrt_check(lrt.name(__VA_ARGS__), #name)

static void lrt_resolve(void *lib) {
#define R(name) *(void **)&lrt.name = sym(lib, "LiteRt" #name)
    R(CreateEnvironment); R(CreateModelFromFile); R(CreateModelFromBuffer); R(CreateOptions);
    R(SetOptionsHardwareAccelerators); R(CreateOpaqueOptions); R(AddOpaqueOptions); R(CreateCompiledModel);
    R(GetNumModelSignatures); R(GetModelSignature); R(GetSignatureKey); R(GetNumSignatureInputs);
    R(GetNumSignatureOutputs); R(GetSignatureInputName); R(GetSignatureOutputName);
    R(GetSignatureInputTensorByIndex); R(GetSignatureOutputTensorByIndex); R(GetRankedTensorType);
    R(CreateTensorBufferFromHostMemory); R(RunCompiledModel);
#undef R
}

static dtype_t from_lrt(int t, const char *name) {
    if (t == LRT_FLOAT32) return DT_FLOAT32;
    if (t == LRT_INT32) return DT_INT32;
    if (t == LRT_INT64) return DT_INT64;
    die("LiteRT: tensor %s has element type %d (not float32/int32/int64)", name, t);
    return DT_FLOAT32;
}

typedef struct {
    void *env, *model, *compiled;
    LiteRtParamIndex sig_index;
    const char *sig_key;
    size_t n_in, n_out;
    void *in_bufs[MAX_TENSORS], *out_bufs[MAX_TENSORS];
    tensors_t outs; /* host memory the output buffers wrap */
    model_bytes_t bytes;
} lrt_t;

static void free_toml(void *p) { free(p); }

static void lrt_load(lrt_t *m, void *lib, const char *model, int threads) {
    lrt_resolve(lib);
    LRT_CALL(CreateEnvironment, 0, NULL, &m->env);
    const char *how = opt("load", "path");
    if (!strcmp(how, "path")) {
        LRT_CALL(CreateModelFromFile, m->env, model, &m->model);
    } else if (!strcmp(how, "bytes") || !strcmp(how, "mmap")) {
        m->bytes = load_bytes(model, how);
        LRT_CALL(CreateModelFromBuffer, m->env, m->bytes.data, m->bytes.size, &m->model);
    } else {
        die("load=%s: use path, bytes or mmap", how);
    }
    void *options = NULL, *cpu = NULL;
    LRT_CALL(CreateOptions, &options);
    LRT_CALL(SetOptionsHardwareAccelerators, options, LRT_ACCEL_CPU);
    /* XNNPACK packs every delegated weight; the in-memory cache (":memory", a memfd) files each packed
     * weight under the buffer it came from, so the sequence-bucket signatures share one packed copy.
     * A file path makes the packed weights a file mapping (written on first load, mapped after). */
    const char *cache = opt("weight_cache", ":memory");
    char *toml = malloc(8192);
    int n = snprintf(toml, 8192, "num_threads = %d\n", threads);
    if (strcmp(cache, "none")) snprintf(toml + n, 8192 - (size_t)n, "weight_cache_file_path = \"%s\"\n", cache);
    LRT_CALL(CreateOpaqueOptions, "xnnpack", toml, free_toml, &cpu);
    LRT_CALL(AddOpaqueOptions, options, cpu);
    LRT_CALL(CreateCompiledModel, m->env, m->model, options, &m->compiled);
}

/* Input i of a signature: its name and ranked tensor type. */
static void signature_input(void *sig, LiteRtParamIndex i, const char **name, LiteRtRankedTensorType *type) {
    void *tensor;
    LRT_CALL(GetSignatureInputName, sig, i, name);
    LRT_CALL(GetSignatureInputTensorByIndex, sig, i, &tensor);
    LRT_CALL(GetRankedTensorType, tensor, type);
}

/* pick the signature (by --signature, else the one whose input shapes equal the feeds') and bind buffers */
static void lrt_bind(lrt_t *m, const tensors_t *feeds, const char *want) {
    LiteRtParamIndex n_sig = 0;
    LRT_CALL(GetNumModelSignatures, m->model, &n_sig);
    void *sig = NULL;
    for (LiteRtParamIndex s = 0; s < n_sig && !sig; s++) {
        void *cand;
        const char *key;
        LiteRtParamIndex n_in;
        LRT_CALL(GetModelSignature, m->model, s, &cand);
        LRT_CALL(GetSignatureKey, cand, &key);
        LRT_CALL(GetNumSignatureInputs, cand, &n_in);
        int fits = want ? !strcmp(key, want) : 1;
        for (LiteRtParamIndex i = 0; i < n_in && fits && !want; i++) {
            const char *name;
            LiteRtRankedTensorType type;
            signature_input(cand, i, &name, &type);
            const tensor_t *t = find_tensor(feeds, name);
            fits = t && t->rank == (int)type.layout.rank;
            for (int d = 0; fits && d < t->rank; d++) fits = t->dims[d] == type.layout.dimensions[d];
        }
        if (fits) { sig = cand; m->sig_index = s; m->sig_key = key; }
    }
    if (!sig) die(want ? "the model has no signature %s" : "no signature of the model takes inputs of these shapes", want);
    LRT_CALL(GetNumSignatureInputs, sig, &m->n_in);
    LRT_CALL(GetNumSignatureOutputs, sig, &m->n_out);
    if (m->n_in > MAX_TENSORS || m->n_out > MAX_TENSORS) die("more than %d inputs or outputs", MAX_TENSORS);
    for (size_t i = 0; i < m->n_in; i++) {
        const char *name;
        LiteRtRankedTensorType type;
        signature_input(sig, i, &name, &type);
        const tensor_t *t = find_tensor(feeds, name);
        if (!t) die("signature %s needs input %s, which the inputs file lacks", m->sig_key, name);
        if (from_lrt(type.element_type, name) != t->dtype)
            die("input %s is %s, signature %s wants LiteRT type %d", name, DT_NAMES[t->dtype], m->sig_key, type.element_type);
        LRT_CALL(CreateTensorBufferFromHostMemory, &type, t->data, nbytes(t), NULL, &m->in_bufs[i]);
    }
    m->outs.n = (int)m->n_out;
    for (size_t i = 0; i < m->n_out; i++) {
        const char *name;
        void *tensor;
        LiteRtRankedTensorType type;
        tensor_t *t = &m->outs.t[i];
        LRT_CALL(GetSignatureOutputName, sig, i, &name);
        LRT_CALL(GetSignatureOutputTensorByIndex, sig, i, &tensor);
        LRT_CALL(GetRankedTensorType, tensor, &type);
        snprintf(t->name, sizeof t->name, "%s", name);
        t->dtype = from_lrt(type.element_type, name);
        t->rank = (int)type.layout.rank;
        t->count = 1;
        for (int d = 0; d < t->rank; d++) {
            t->dims[d] = type.layout.dimensions[d];
            t->count *= (size_t)t->dims[d];
        }
        t->data = aligned(nbytes(t));
        LRT_CALL(CreateTensorBufferFromHostMemory, &type, t->data, nbytes(t), NULL, &m->out_bufs[i]);
    }
}

static void lrt_run(lrt_t *m) {
    LRT_CALL(RunCompiledModel, m->compiled, m->sig_index, m->n_in, m->in_bufs, m->n_out, m->out_bufs);
}

/* ------------------------------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* nearest-rank percentile of sorted values */
static double percentile(const double *v, int n, double q) {
    int k = (int)(q * n + 0.999999) - 1;
    if (k < 0) k = 0;
    if (k >= n) k = n - 1;
    return v[k];
}

static void json_mem(const char *key, int field) {
    printf("\"%s\": {", key);
    for (int s = 0; s < 4; s++) {
        const mem_t *m = &g_mem[s];
        long v = field == 0 ? m->rss : field == 1 ? m->anon : field == 2 ? m->rss - m->anon - (m->shmem > 0 ? m->shmem : 0) : m->shmem;
        printf("%s\"%s\": %ld", s ? ", " : "", STAGES[s], v);
    }
    printf("}, ");
}

static void usage(void) {
    fputs("usage: edgecomp-probe --lib LIB --model PATH --inputs FEEDS --outputs OUT [--runs N] [--warmup N]\n"
          "                      [--threads N] [--signature KEY] [--option KEY=VALUE]... [--checkpoints DIR]\n", stderr);
    exit(2);
}

int main(int argc, char **argv) {
    const char *lib_path = NULL, *model = NULL, *inputs = NULL, *outputs = NULL, *signature = NULL;
    int runs = 10, warmup = 1, threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--lib")) lib_path = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--inputs")) inputs = v;
        else if (!strcmp(a, "--outputs")) outputs = v;
        else if (!strcmp(a, "--runs")) runs = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--signature")) signature = v;
        else if (!strcmp(a, "--checkpoints")) g_checkpoints = v;
        else if (!strcmp(a, "--option")) {
            const char *eq = strchr(v, '=');
            if (!eq || g_opts.n == MAX_OPTIONS) die("--option %s: expected KEY=VALUE", v);
            g_opts.key[g_opts.n] = strndup(v, (size_t)(eq - v));
            g_opts.value[g_opts.n++] = strdup(eq + 1);
        } else usage();
    }
    if (!lib_path || !model || !inputs || !outputs) usage();
    if (runs < 1 || runs > MAX_RUNS || warmup < 0 || threads < 1) die("need runs in 1..%d, warmup >= 0, threads >= 1", MAX_RUNS);
    const char *dot = strrchr(model, '.');
    int is_tflite = dot && !strcmp(dot, ".tflite");
    if (!dot || (!is_tflite && strcmp(dot, ".onnx") && strcmp(dot, ".ort"))) die("%s: not an .onnx, .ort or .tflite file", model);

    tensors_t feeds = {0}, outs = {0};
    read_tensors(inputs, &feeds);
    void *lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) die("cannot load %s: %s", lib_path, dlerror());
    checkpoint(0);

    ort_t o = {0};
    lrt_t m = {0};
    mark(LABEL_START);
    double t0 = now_ms();
    if (is_tflite) {
        lrt_load(&m, lib, model, threads);
        lrt_bind(&m, &feeds, signature);
    } else {
        ort_load(&o, lib, model, threads);
        ort_bind(&o, &feeds);
    }
    double load_ms = now_ms() - t0;
    mark(LABEL_LOADED);
    for (int i = 0; i < g_opts.n; i++)
        if (!g_opts.used[i]) die("--option %s does not apply to this runtime", g_opts.key[i]);
    checkpoint(1);

    /* first run: lazy allocations (ORT's arena, LiteRT's tensors) land here; its outputs are reported */
    t0 = now_ms();
    if (is_tflite) lrt_run(&m);
    else ort_run(&o, &outs, 1);
    double first_ms = now_ms() - t0;
    checkpoint(2);
    for (int i = 1; i < warmup; i++) {
        if (is_tflite) lrt_run(&m);
        else ort_run(&o, NULL, 0);
    }
    double *lat = malloc(sizeof(double) * (size_t)runs);
    mark(0);
    for (int i = 0; i < runs; i++) {
        t0 = now_ms();
        if (is_tflite) lrt_run(&m);
        else ort_run(&o, NULL, 0);
        lat[i] = now_ms() - t0;
        mark(i + 1);
    }
    checkpoint(3);
    long peak = status_kb("VmHWM");
    where_t where = read_where(lib_path, model);
    write_tensors(outputs, is_tflite ? &m.outs : &outs);

    qsort(lat, (size_t)runs, sizeof(double), cmp_double);
    printf("{\"runtime\": \"%s\", ", is_tflite ? "litert" : "onnxruntime");
    if (!is_tflite) printf("\"runtime_version\": \"%s\", ", o.version);
    if (is_tflite) printf("\"signature\": \"%s\", ", m.sig_key);
    printf("\"threads\": %d, \"runs\": %d, \"warmup\": %d, ", threads, runs, warmup);
    printf("\"peak_rss_kb\": %ld, ", peak);
    json_mem("rss_kb", 0);
    json_mem("anon_kb", 1);
    json_mem("file_kb", 2);
    json_mem("shmem_kb", 3);
    printf("\"smaps_kb\": {\"runtime_library\": %ld, \"model_file\": %ld, \"other_files\": %ld, \"anon\": %ld, "
           "\"shmem\": %ld}, ", where.runtime_library, where.model_file, where.other_files, where.anon, where.shmem);
    printf("\"load_ms\": %.3f, \"first_run_ms\": %.3f, ", load_ms, first_ms);
    printf("\"latency_ms\": {\"p50\": %.4f, \"p90\": %.4f, \"min\": %.4f}, ", percentile(lat, runs, 0.5),
           percentile(lat, runs, 0.9), lat[0]);
    printf("\"options\": {");
    for (int i = 0; i < g_opts.n; i++) printf("%s\"%s\": \"%s\"", i ? ", " : "", g_opts.key[i], g_opts.value[i]);
    printf("}}\n");
    fflush(stdout);
    /* leave without tearing the runtime down: a device app's exit does not either, and destructor logs
     * would land after the JSON */
    _exit(0);
}
