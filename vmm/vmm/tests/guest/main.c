/*
 * rmachine-vmm test guest: freestanding x86_64 code booted like a Linux kernel. It checks the
 * boot state, drives every virtio-mmio device announced on the command line (polling, with
 * interrupts off), reports on COM1 with lines starting "rmguest: ", and resets the machine
 * through the i8042.
 */
#include <stdint.h>
#include <stddef.h>

typedef uint8_t u8; typedef uint16_t u16; typedef uint32_t u32; typedef uint64_t u64;

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u64 rdmsr(u32 msr) { u32 lo, hi; __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr)); return ((u64)hi << 32) | lo; }
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }
static inline u32 mmio_r(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_w(u64 a, u32 v) { *(volatile u32 *)a = v; }

static void putc_(char c) {
    for (int i = 0; i < 100000 && !(inb(0x3fd) & 0x20); i++) {}
    outb(0x3f8, (u8)c);
}
static void puts_(const char *s) { while (*s) putc_(*s++); }
static void putdec(u64 v) { char b[24]; int i = 0; do { b[i++] = '0' + v % 10; v /= 10; } while (v); while (i) putc_(b[--i]); }
static void puthex(u64 v) { puts_("0x"); for (int i = 60; i >= 0; i -= 4) putc_("0123456789abcdef"[(v >> i) & 15]); }

static int failures;
static void fail(const char *what) { puts_("rmguest: FAIL "); puts_(what); putc_('\n'); failures++; }

static void *memset_(void *d, int c, size_t n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
static void *memcpy_(void *d, const void *s, size_t n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
void *memset(void *d, int c, size_t n) { return memset_(d, c, n); }
void *memcpy(void *d, const void *s, size_t n) { return memcpy_(d, s, n); }
static int memeq(const void *a, const void *b, size_t n) { const u8 *p = a, *q = b; while (n--) if (*p++ != *q++) return 0; return 1; }
static int startswith(const char *s, const char *p) { while (*p) if (*s++ != *p++) return 0; return 1; }
static u64 parse_num(const char **sp) {
    const char *s = *sp; u64 v = 0; int base = 10;
    if (s[0] == '0' && s[1] == 'x') { base = 16; s += 2; }
    for (;;) {
        char c = *s; int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (base == 16 && c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else break;
        v = v * base + d; s++;
    }
    *sp = s; return v;
}

/* ---- kernel command line: rmtest.* keys ---- */
extern u64 boot_params_addr; /* kept by start.S */
static const char *boot_cmdline(void) { return (const char *)(u64)*(const u32 *)(boot_params_addr + 0x228); }
static u32 cmdline_num(const char *cmdline, const char *key) {
    for (const char *s = cmdline; *s; s++) {
        if ((s == cmdline || s[-1] == ' ') && startswith(s, key)) {
            const char *p = s; while (*p && *p != '=') p++;
            if (*p == '=') { p++; return (u32)parse_num(&p); }
        }
    }
    return 0;
}

/* Benchmarks (benches/src/bin/vmm.rs): rmtest.bench=boot|blk|vsock replaces the test of that
 * device by a measurement the host times between "rmguest: ready" or "rmguest: bench ..."
 * lines; without the key the tests run as always. rmtest.bench_mib sets sizes; with
 * rmtest.sync=1 the guest waits for a byte on COM1 after each "rmguest: bench waiting ..."
 * line. Buffers lie from 32 MiB up: a bench VM needs 64 MiB of memory. */
#define BENCH_BUF 0x2000000ull
static int bench_is(const char *mode) {
    const char *c = boot_cmdline();
    for (const char *s = c; *s; s++) {
        if ((s != c && s[-1] != ' ') || !startswith(s, "rmtest.bench=")) continue;
        const char *p = s + 13; u32 n = 0;
        while (mode[n] && p[n] == mode[n]) n++;
        if (!mode[n] && (p[n] == ' ' || !p[n])) return 1;
    }
    return 0;
}
static u64 bench_bytes(u32 default_mib) { u32 mib = cmdline_num(boot_cmdline(), "rmtest.bench_mib"); return (u64)(mib ? mib : default_mib) << 20; }
static void wait_serial(void);
static void bench_sync(const char *what) {
    if (!cmdline_num(boot_cmdline(), "rmtest.sync")) return;
    puts_("rmguest: bench waiting "); puts_(what); putc_('\n');
    wait_serial();
}
/* The guest's own speed (rmtest.bench=spin): rmtest.spin_k thousand iterations (default 100) of
 * a three-instruction loop between two lines. */
static void bench_spin(void) {
    u32 k = cmdline_num(boot_cmdline(), "rmtest.spin_k");
    u64 n = (u64)(k ? k : 100) * 1000;
    puts_("rmguest: bench spin start\n");
    for (u64 i = 0; i < n; i++) __asm__ volatile("");
    puts_("rmguest: bench spin done\n");
}

/* ---- virtio-mmio ---- */
enum { MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, DEV_FEAT = 0x010, DEV_FEAT_SEL = 0x014,
       DRV_FEAT = 0x020, DRV_FEAT_SEL = 0x024, QSEL = 0x030, QNUMMAX = 0x034, QNUM = 0x038,
       QREADY = 0x044, QNOTIFY = 0x050, ISR = 0x060, IACK = 0x064, STATUS = 0x070,
       QDESC_LO = 0x080, QDESC_HI = 0x084, QDRV_LO = 0x090, QDRV_HI = 0x094,
       QDEV_LO = 0x0a0, QDEV_HI = 0x0a4, CONFIG = 0x100 };
#define QSZ 16
#define F_NEXT 1
#define F_WRITE 2

struct desc { u64 addr; u32 len; u16 flags; u16 next; };
struct avail { u16 flags; u16 idx; u16 ring[QSZ]; u16 used_event; };
struct used_elem { u32 id; u32 len; };
struct used { u16 flags; u16 idx; struct used_elem ring[QSZ]; u16 avail_event; };

struct vq {
    u64 base; u32 index;
    volatile struct desc *desc; volatile struct avail *avail; volatile struct used *used;
    u16 last_used;
};

#define MAX_QUEUES 12
static u8 ring_mem[MAX_QUEUES][3][4096] __attribute__((aligned(4096)));
static int rings_used;

static int vq_setup(struct vq *q, u64 base, u32 index) {
    if (rings_used >= MAX_QUEUES) return -1;
    u8 (*r)[4096] = ring_mem[rings_used++];
    q->base = base; q->index = index; q->last_used = 0;
    q->desc = (volatile struct desc *)r[0];
    q->avail = (volatile struct avail *)r[1];
    q->used = (volatile struct used *)r[2];
    mmio_w(base + QSEL, index);
    if (mmio_r(base + QNUMMAX) < QSZ) return -1;
    mmio_w(base + QNUM, QSZ);
    mmio_w(base + QDESC_LO, (u32)(u64)r[0]); mmio_w(base + QDESC_HI, (u32)((u64)r[0] >> 32));
    mmio_w(base + QDRV_LO, (u32)(u64)r[1]); mmio_w(base + QDRV_HI, (u32)((u64)r[1] >> 32));
    mmio_w(base + QDEV_LO, (u32)(u64)r[2]); mmio_w(base + QDEV_HI, (u32)((u64)r[2] >> 32));
    mmio_w(base + QREADY, 1);
    return mmio_r(base + QREADY) == 1 ? 0 : -1;
}

static void vq_post(struct vq *q, u16 head) {
    q->avail->ring[q->avail->idx % QSZ] = head;
    mb();
    q->avail->idx = q->avail->idx + 1;
    mb();
    mmio_w(q->base + QNOTIFY, q->index);
}

/* Waits for the next used element; returns its length, or -1 after a long time. */
static long vq_wait(struct vq *q, u32 *id) {
    for (u64 spins = 0; spins < 4000000000ull; spins++) {
        mb();
        if (q->used->idx != q->last_used) {
            volatile struct used_elem *e = &q->used->ring[q->last_used % QSZ];
            q->last_used++;
            if (id) *id = e->id;
            mmio_w(q->base + IACK, mmio_r(q->base + ISR));
            return e->len;
        }
        __asm__ volatile("pause");
    }
    return -1;
}

/* Negotiates features (VERSION_1 plus `want` in the low word); returns the low device features. */
static int dev_init(u64 base, u32 want, u32 *features) {
    mmio_w(base + STATUS, 0);
    mmio_w(base + STATUS, 1);
    mmio_w(base + STATUS, 1 | 2);
    mmio_w(base + DEV_FEAT_SEL, 1);
    u32 hi = mmio_r(base + DEV_FEAT);
    mmio_w(base + DEV_FEAT_SEL, 0);
    u32 lo = mmio_r(base + DEV_FEAT);
    if (!(hi & 1)) return -1;
    mmio_w(base + DRV_FEAT_SEL, 1); mmio_w(base + DRV_FEAT, 1);
    mmio_w(base + DRV_FEAT_SEL, 0); mmio_w(base + DRV_FEAT, lo & want);
    mmio_w(base + STATUS, 1 | 2 | 8);
    if (!(mmio_r(base + STATUS) & 8)) return -1;
    *features = lo;
    return 0;
}

static void dev_ready(u64 base) { mmio_w(base + STATUS, 1 | 2 | 8 | 4); }

/* ---- virtio-blk ---- */
struct blk_hdr { u32 type; u32 reserved; u64 sector; };
static struct blk_hdr bhdr __attribute__((aligned(16)));
static u8 bdata[8192] __attribute__((aligned(4096)));
static u8 bcheck[8192];
static volatile u8 bstatus;

static int blk_req(struct vq *q, u32 type, u64 sector, u32 len, int write_data) {
    bhdr.type = type; bhdr.reserved = 0; bhdr.sector = sector; bstatus = 0xff;
    q->desc[0].addr = (u64)&bhdr; q->desc[0].len = sizeof bhdr; q->desc[0].flags = F_NEXT; q->desc[0].next = 1;
    u16 n = 1;
    if (len) {
        q->desc[1].addr = (u64)bdata; q->desc[1].len = len;
        q->desc[1].flags = F_NEXT | (write_data ? 0 : F_WRITE); q->desc[1].next = 2; n = 2;
    }
    q->desc[n].addr = (u64)&bstatus; q->desc[n].len = 1; q->desc[n].flags = F_WRITE; q->desc[n].next = 0;
    vq_post(q, 0);
    if (vq_wait(q, 0) < 0) return -1;
    return bstatus;
}

/* blk benchmark (rmtest.bench=blk): sequential writes of rmtest.bench_mib MiB (default 64) and a
 * flush, then two sequential read passes, in requests of rmtest.bench_req_kib KiB (default
 * 1024) with BB_DEPTH in flight, each slot with its own buffer from BENCH_BUF. */
#define BB_DEPTH 4
static struct blk_hdr bb_hdr[BB_DEPTH] __attribute__((aligned(16)));
static volatile u8 bb_status[BB_DEPTH];

static int blk_bench_pass(struct vq *q, u32 type, u64 bytes, u32 req) {
    u32 busy = 0; u64 next = 0;
    for (;;) {
        for (u32 s = 0; s < BB_DEPTH && next < bytes; s++) {
            if (busy & (1u << s)) continue;
            u16 d = (u16)(s * 3);
            bb_hdr[s].type = type; bb_hdr[s].reserved = 0; bb_hdr[s].sector = next >> 9; bb_status[s] = 0xff;
            q->desc[d].addr = (u64)&bb_hdr[s]; q->desc[d].len = sizeof bb_hdr[s]; q->desc[d].flags = F_NEXT; q->desc[d].next = d + 1;
            q->desc[d + 1].addr = BENCH_BUF + (u64)s * req; q->desc[d + 1].len = req;
            q->desc[d + 1].flags = F_NEXT | (type == 0 ? F_WRITE : 0); q->desc[d + 1].next = d + 2;
            q->desc[d + 2].addr = (u64)&bb_status[s]; q->desc[d + 2].len = 1; q->desc[d + 2].flags = F_WRITE; q->desc[d + 2].next = 0;
            vq_post(q, d);
            busy |= 1u << s; next += req;
        }
        if (!busy) return 0;
        u32 id;
        if (vq_wait(q, &id) < 0 || id / 3 >= BB_DEPTH || bb_status[id / 3] != 0) return -1;
        busy &= ~(1u << (id / 3));
    }
}

static void bench_blk(struct vq *q, u64 capacity) {
    u64 bytes = bench_bytes(64);
    u32 kib = cmdline_num(boot_cmdline(), "rmtest.bench_req_kib");
    u32 req = (kib ? kib : 1024) << 10;
    if (bytes > capacity << 9 || bytes % req || req % 512) { fail("bench blk size"); return; }
    /* The first words of every request carry a pattern, checked after each read pass; the guest
     * touches no more (its instructions, not the device, would be measured). */
    volatile u64 *buf = (volatile u64 *)BENCH_BUF;
    for (u32 s = 0; s < BB_DEPTH; s++) for (u32 i = 0; i < 64; i++) buf[s * (req / 8) + i] = (i + 1) * 0x9e3779b97f4a7c15ull;
    bench_sync("blk write");
    puts_("rmguest: bench blk write start\n");
    if (blk_bench_pass(q, 1, bytes, req) || blk_req(q, 4, 0, 0, 0) != 0) { fail("bench blk write"); return; }
    puts_("rmguest: bench blk write done\n");
    for (int pass = 0; pass < 2; pass++) {
        for (u32 s = 0; s < BB_DEPTH; s++) for (u32 i = 0; i < 64; i++) buf[s * (req / 8) + i] = 0;
        bench_sync("blk read");
        puts_("rmguest: bench blk read start\n");
        if (blk_bench_pass(q, 0, bytes, req)) { fail("bench blk read"); return; }
        puts_("rmguest: bench blk read done\n");
        for (u32 s = 0; s < BB_DEPTH; s++)
            for (u32 i = 0; i < 64; i++) if (buf[s * (req / 8) + i] != (i + 1) * 0x9e3779b97f4a7c15ull) { fail("bench blk readback"); return; }
    }
    bench_sync("blk done");
}

static void test_blk(u64 base) {
    struct vq q; u32 f;
    /* RO (5), FLUSH (9), DISCARD (13), WRITE_ZEROES (14) */
    if (dev_init(base, (1u << 5) | (1u << 9) | (1u << 13) | (1u << 14), &f) || vq_setup(&q, base, 0)) { fail("blk init"); return; }
    dev_ready(base);
    u64 capacity = mmio_r(base + CONFIG) | ((u64)mmio_r(base + CONFIG + 4) << 32);
    memset_(bdata, 0, 20);
    if (blk_req(&q, 8, 0, 20, 0) != 0) { fail("blk get_id"); return; }
    puts_("rmguest: blk "); puts_((const char *)bdata); puts_(" capacity "); putdec(capacity);
    if (f & (1u << 5)) {
        puts_(" read-only\n");
        if (blk_req(&q, 0, 0, 512, 0) != 0) { fail("blk ro read"); return; }
        memcpy_(bcheck, bdata, 512);
        if (blk_req(&q, 1, 0, 512, 1) != 1) { fail("blk ro write not refused"); return; }
        puts_("rmguest: blk ro ok\n");
        return;
    }
    putc_('\n');
    if (bench_is("boot")) {
        /* Ready: booted, the disk driven and one read served. */
        if (blk_req(&q, 0, 0, 4096, 0) != 0) { fail("blk boot read"); return; }
        puts_("rmguest: ready\n");
        bench_sync("ready");
        return;
    }
    if (bench_is("blk")) { bench_blk(&q, capacity); return; }
    if (bench_is("spin")) { bench_spin(); return; }
    for (u32 i = 0; i < 4096; i++) bdata[i] = (u8)(i * 7 + 3);
    memcpy_(bcheck, bdata, 4096);
    if (blk_req(&q, 1, 2, 4096, 1) != 0) { fail("blk write"); return; }
    memset_(bdata, 0, 4096);
    if (blk_req(&q, 0, 2, 4096, 0) != 0) { fail("blk read"); return; }
    if (!memeq(bdata, bcheck, 4096)) { fail("blk readback"); return; }
    if (blk_req(&q, 4, 0, 0, 0) != 0) { fail("blk flush"); return; }
    if (blk_req(&q, 0, capacity, 512, 0) != 1) { fail("blk read past end not refused"); return; }
    if (blk_req(&q, 77, 0, 0, 0) != 2) { fail("blk unsupported not refused"); return; }
    puts_("rmguest: blk rw ok\n");
}

/* ---- virtio-rng ---- */
static u8 rbuf[64] __attribute__((aligned(64)));
static void test_rng(u64 base) {
    struct vq q; u32 f;
    if (dev_init(base, 0, &f) || vq_setup(&q, base, 0)) { fail("rng init"); return; }
    dev_ready(base);
    memset_(rbuf, 0, sizeof rbuf);
    q.desc[0].addr = (u64)rbuf; q.desc[0].len = sizeof rbuf; q.desc[0].flags = F_WRITE; q.desc[0].next = 0;
    vq_post(&q, 0);
    long len = vq_wait(&q, 0);
    int nonzero = 0;
    for (u32 i = 0; i < sizeof rbuf; i++) nonzero |= rbuf[i];
    if (len != sizeof rbuf || !nonzero) { fail("rng"); return; }
    puts_("rmguest: rng ok "); putdec(len); putc_('\n');
}

/* ---- virtio-vsock ---- */
struct vsock_hdr {
    u64 src_cid; u64 dst_cid; u32 src_port; u32 dst_port; u32 len; u16 type; u16 op;
    u32 flags; u32 buf_alloc; u32 fwd_cnt;
} __attribute__((packed));
enum { OP_REQUEST = 1, OP_RESPONSE = 2, OP_RST = 3, OP_SHUTDOWN = 4, OP_RW = 5, OP_CREDIT_UPDATE = 6, OP_CREDIT_REQUEST = 7 };
#define RXBUFS 8
#define RXBUF_LEN (44 + 4096)
static u8 vrx[RXBUFS][RXBUF_LEN] __attribute__((aligned(4096)));
static u8 vtx[44 + 4096] __attribute__((aligned(4096)));
static struct vq vsock_rx, vsock_tx;
static u64 guest_cid;
static u32 fwd_cnt;

static void vsock_post_rx(u16 i) {
    vsock_rx.desc[i].addr = (u64)vrx[i]; vsock_rx.desc[i].len = RXBUF_LEN;
    vsock_rx.desc[i].flags = F_WRITE; vsock_rx.desc[i].next = 0;
    vq_post(&vsock_rx, i);
}

static int vsock_send(u32 src_port, u32 dst_port, u16 op, u32 flags, const void *data, u32 len) {
    struct vsock_hdr *h = (struct vsock_hdr *)vtx;
    h->src_cid = guest_cid; h->dst_cid = 2; h->src_port = src_port; h->dst_port = dst_port;
    h->len = len; h->type = 1; h->op = op; h->flags = flags; h->buf_alloc = 65536; h->fwd_cnt = fwd_cnt;
    memcpy_(vtx + 44, data, len);
    vsock_tx.desc[0].addr = (u64)vtx; vsock_tx.desc[0].len = 44 + len; vsock_tx.desc[0].flags = 0; vsock_tx.desc[0].next = 0;
    vq_post(&vsock_tx, 0);
    return vq_wait(&vsock_tx, 0) < 0 ? -1 : 0;
}

/* Receives the next packet for local port `port`, skipping credit updates; copies the payload. */
static int vsock_recv(u32 port, struct vsock_hdr *out, u8 *data, u32 cap) {
    for (;;) {
        u32 id;
        if (vq_wait(&vsock_rx, &id) < 0 || id >= RXBUFS) return -1;
        struct vsock_hdr h;
        memcpy_(&h, vrx[id], sizeof h);
        u32 n = h.len < cap ? h.len : cap;
        memcpy_(data, vrx[id] + 44, n);
        vsock_post_rx((u16)id);
        if (h.dst_port != port || h.op == OP_CREDIT_UPDATE) continue;
        if (h.op == OP_RW) fwd_cnt += h.len;
        *out = h;
        return (int)n;
    }
}

/* vsock benchmark (rmtest.bench=vsock): with rmtest.g2h=P the guest sends rmtest.bench_mib MiB
 * (default 256) to host port P and half-closes; with rmtest.h2g=P it accepts a host connection
 * on port P, takes as many bytes and answers one byte. 64 KiB packets, BVS_TXDEPTH of them in
 * flight, credit respected both ways; the payload is at BENCH_BUF, receive buffers follow. */
#define BVS_PKT 65536u
#define BVS_TXDEPTH 4
#define BVS_RXBUFS QSZ
#define BVS_BUF_ALLOC (BVS_RXBUFS * BVS_PKT)
#define BVS_SPINS 4000000000ull
static struct vsock_hdr bvs_hdr[BVS_TXDEPTH];
static u32 bvs_tx_busy, bvs_tx_next, bvs_tx_cnt, bvs_fwd_cnt, bvs_fwd_sent, bvs_peer_alloc, bvs_peer_fwd;
static const u8 bvs_ack = 'k';

static u64 bvs_rxbuf(u32 i) { return BENCH_BUF + BVS_PKT + (u64)i * (BVS_PKT + 4096); }

static void bvs_post_rx(u16 i) {
    vsock_rx.desc[i].addr = bvs_rxbuf(i); vsock_rx.desc[i].len = 44 + BVS_PKT;
    vsock_rx.desc[i].flags = F_WRITE; vsock_rx.desc[i].next = 0;
    vq_post(&vsock_rx, i);
}

/* Frees the tx slots of the packets the device has taken (polling: no interrupt ack). */
static void bvs_reclaim(void) {
    mb();
    while (vsock_tx.used->idx != vsock_tx.last_used) {
        u32 id = vsock_tx.used->ring[vsock_tx.last_used % QSZ].id;
        vsock_tx.last_used++;
        bvs_tx_busy &= ~(1u << (id / 2));
    }
}

/* Queues one packet (the header, then `len` bytes at guest address `data`) in the next tx slot
 * once it is free. */
static int bvs_send(u32 src_port, u32 dst_port, u16 op, u32 flags, u64 data, u32 len) {
    u32 s = bvs_tx_next;
    bvs_tx_next = (s + 1) % BVS_TXDEPTH;
    for (u64 spins = 0; bvs_tx_busy & (1u << s); spins++) {
        if (spins == BVS_SPINS) return -1;
        bvs_reclaim();
    }
    struct vsock_hdr *h = &bvs_hdr[s];
    h->src_cid = guest_cid; h->dst_cid = 2; h->src_port = src_port; h->dst_port = dst_port; h->len = len;
    h->type = 1; h->op = op; h->flags = flags; h->buf_alloc = BVS_BUF_ALLOC; h->fwd_cnt = bvs_fwd_cnt;
    u16 d = (u16)(s * 2);
    vsock_tx.desc[d].addr = (u64)h; vsock_tx.desc[d].len = 44; vsock_tx.desc[d].flags = len ? F_NEXT : 0; vsock_tx.desc[d].next = d + 1;
    vsock_tx.desc[d + 1].addr = data; vsock_tx.desc[d + 1].len = len; vsock_tx.desc[d + 1].flags = 0; vsock_tx.desc[d + 1].next = 0;
    bvs_tx_busy |= 1u << s;
    if (op == OP_RW) bvs_tx_cnt += len;
    bvs_fwd_sent = bvs_fwd_cnt;
    vq_post(&vsock_tx, d);
    return 0;
}

static int bvs_drain(void) {
    for (u64 spins = 0; bvs_tx_busy; spins++) {
        if (spins == BVS_SPINS) return -1;
        bvs_reclaim();
        __asm__ volatile("pause");
    }
    return 0;
}

/* Takes the next packet for local port `port` without waiting: 1 with its header, or 0. Records
 * the host's credit, counts the data consumed, and posts the buffer again. */
static int bvs_poll(u32 port, struct vsock_hdr *out) {
    mb();
    while (vsock_rx.used->idx != vsock_rx.last_used) {
        u32 id = vsock_rx.used->ring[vsock_rx.last_used % QSZ].id;
        vsock_rx.last_used++;
        if (id >= BVS_RXBUFS) continue;
        const struct vsock_hdr *h = (const struct vsock_hdr *)bvs_rxbuf(id);
        if (h->dst_port != port) { bvs_post_rx((u16)id); continue; }
        out->src_port = h->src_port; out->op = h->op; out->len = h->len;
        bvs_peer_alloc = h->buf_alloc; bvs_peer_fwd = h->fwd_cnt;
        if (h->op == OP_RW) bvs_fwd_cnt += h->len;
        bvs_post_rx((u16)id);
        return 1;
    }
    return 0;
}

static int bvs_wait(u32 port, struct vsock_hdr *h) {
    for (u64 spins = 0; spins < BVS_SPINS; spins++) {
        if (bvs_poll(port, h)) return 0;
        __asm__ volatile("pause");
    }
    return -1;
}

/* After our last packet: waits for the host's close, answers it with a reset. */
static int bvs_close(u32 port, u32 peer) {
    struct vsock_hdr h;
    do { if (bvs_wait(port, &h)) return -1; } while (h.op != OP_SHUTDOWN && h.op != OP_RST);
    if (h.op == OP_SHUTDOWN && bvs_send(port, peer, OP_RST, 0, 0, 0)) return -1;
    return bvs_drain();
}

static int bvs_g2h(u32 host_port, u64 bytes) {
    const u32 me = 1235;
    struct vsock_hdr h;
    bvs_tx_cnt = bvs_fwd_cnt = 0;
    if (bvs_send(me, host_port, OP_REQUEST, 0, 0, 0)) { fail("bench vsock g2h request"); return -1; }
    do { if (bvs_wait(me, &h)) { fail("bench vsock g2h connect"); return -1; } } while (h.op == OP_CREDIT_UPDATE);
    if (h.op != OP_RESPONSE) { fail("bench vsock g2h refused"); return -1; }
    puts_("rmguest: bench vsock g2h start\n");
    u64 sent = 0, idle = 0;
    while (sent < bytes) {
        while (bvs_poll(me, &h)) if (h.op == OP_SHUTDOWN || h.op == OP_RST) { fail("bench vsock g2h closed early"); return -1; }
        u32 credit = bvs_peer_alloc - (bvs_tx_cnt - bvs_peer_fwd);
        u64 len = bytes - sent < BVS_PKT ? bytes - sent : BVS_PKT;
        if (len > credit) len = credit;
        if (!len) {
            if (++idle == BVS_SPINS) { fail("bench vsock g2h no credit"); return -1; }
            __asm__ volatile("pause");
            continue;
        }
        idle = 0;
        if (bvs_send(me, host_port, OP_RW, 0, BENCH_BUF, (u32)len)) { fail("bench vsock g2h send"); return -1; }
        sent += len;
    }
    /* Half-close: the host reads to the end and closes. */
    if (bvs_send(me, host_port, OP_SHUTDOWN, 2, 0, 0) || bvs_close(me, host_port)) { fail("bench vsock g2h close"); return -1; }
    puts_("rmguest: bench vsock g2h sent "); putdec(sent >> 20); puts_(" MiB\n");
    return 0;
}

static int bvs_h2g(u32 port, u64 bytes) {
    struct vsock_hdr h;
    puts_("rmguest: bench vsock listening "); putdec(port); putc_('\n');
    do { if (bvs_wait(port, &h)) { fail("bench vsock h2g request"); return -1; } } while (h.op != OP_REQUEST);
    u32 peer = h.src_port;
    bvs_tx_cnt = bvs_fwd_cnt = bvs_fwd_sent = 0;
    if (bvs_send(port, peer, OP_RESPONSE, 0, 0, 0)) { fail("bench vsock h2g response"); return -1; }
    u64 got = 0;
    while (got < bytes) {
        if (bvs_wait(port, &h)) { fail("bench vsock h2g data"); return -1; }
        if (h.op == OP_RW) got += h.len;
        else if (h.op == OP_SHUTDOWN || h.op == OP_RST) { fail("bench vsock h2g closed early"); return -1; }
        if (bvs_fwd_cnt - bvs_fwd_sent >= BVS_BUF_ALLOC / 4 && bvs_send(port, peer, OP_CREDIT_UPDATE, 0, 0, 0)) { fail("bench vsock h2g credit"); return -1; }
    }
    /* One byte back: the host stops its clock when it reads it. */
    if (bvs_send(port, peer, OP_RW, 0, (u64)&bvs_ack, 1) || bvs_close(port, peer)) { fail("bench vsock h2g close"); return -1; }
    puts_("rmguest: bench vsock h2g received "); putdec(got >> 20); puts_(" MiB\n");
    return 0;
}

static void bench_vsock(const char *cmdline) {
    u64 bytes = bench_bytes(256);
    for (u64 i = 0; i < 64; i++) ((volatile u64 *)BENCH_BUF)[i] = (i + 1) * 0x9e3779b97f4a7c15ull;
    for (u16 i = 0; i < BVS_RXBUFS; i++) bvs_post_rx(i);
    u32 host_port = cmdline_num(cmdline, "rmtest.g2h");
    if (host_port && bvs_g2h(host_port, bytes)) return;
    u32 listen_port = cmdline_num(cmdline, "rmtest.h2g");
    if (listen_port && bvs_h2g(listen_port, bytes)) return;
    bench_sync("vsock done");
}

static void test_vsock(u64 base, const char *cmdline) {
    u32 f; u8 buf[256]; struct vsock_hdr h;
    if (dev_init(base, 0, &f) || vq_setup(&vsock_rx, base, 0) || vq_setup(&vsock_tx, base, 1)) { fail("vsock init"); return; }
    struct vq evq;
    if (vq_setup(&evq, base, 2)) { fail("vsock evq"); return; }
    dev_ready(base);
    guest_cid = mmio_r(base + CONFIG) | ((u64)mmio_r(base + CONFIG + 4) << 32);
    puts_("rmguest: vsock cid "); putdec(guest_cid); putc_('\n');
    if (bench_is("vsock")) { bench_vsock(cmdline); return; }
    for (u16 i = 0; i < RXBUFS; i++) vsock_post_rx(i);

    u32 host_port = cmdline_num(cmdline, "rmtest.g2h");
    if (host_port) {
        const u32 me = 1234;
        fwd_cnt = 0;
        vsock_send(me, host_port, OP_REQUEST, 0, 0, 0);
        if (vsock_recv(me, &h, buf, sizeof buf) < 0 || h.op != OP_RESPONSE) { fail("vsock g2h connect"); return; }
        vsock_send(me, host_port, OP_RW, 0, "ping-from-guest", 15);
        u32 got = 0;
        while (got < 14) {
            int n = vsock_recv(me, &h, buf + got, sizeof buf - got);
            if (n < 0 || h.op != OP_RW) { fail("vsock g2h reply"); return; }
            got += n;
        }
        if (!memeq(buf, "pong-from-host", 14)) { fail("vsock g2h data"); return; }
        vsock_send(me, host_port, OP_SHUTDOWN, 3, 0, 0);
        puts_("rmguest: vsock g2h ok\n");
    }
    u32 listen_port = cmdline_num(cmdline, "rmtest.h2g");
    if (listen_port) {
        fwd_cnt = 0; /* credit counters are per connection */
        puts_("rmguest: vsock listening "); putdec(listen_port); putc_('\n');
        int n;
        do { n = vsock_recv(listen_port, &h, buf, sizeof buf); } while (n >= 0 && h.op != OP_REQUEST);
        if (n < 0) { fail("vsock h2g request"); return; }
        u32 peer = h.src_port;
        vsock_send(listen_port, peer, OP_RESPONSE, 0, 0, 0);
        u32 got = 0;
        while (got < 11) {
            n = vsock_recv(listen_port, &h, buf + got, sizeof buf - got);
            if (n < 0 || h.op != OP_RW) { fail("vsock h2g data"); return; }
            got += n;
        }
        if (!memeq(buf, "hello-guest", 11)) { fail("vsock h2g content"); return; }
        vsock_send(listen_port, peer, OP_RW, 0, buf, got);
        /* The host closes: SHUTDOWN, then we reset the connection. */
        do { n = vsock_recv(listen_port, &h, buf, sizeof buf); } while (n >= 0 && h.op != OP_SHUTDOWN && h.op != OP_RST);
        if (n < 0) { fail("vsock h2g close"); return; }
        vsock_send(listen_port, peer, OP_RST, 0, 0, 0);
        puts_("rmguest: vsock h2g ok\n");
    }
}

/* Waits for one byte on COM1 (the host's sync signal through the VMM's stdin). */
static void wait_serial(void) {
    for (u64 spins = 0; spins < 4000000000ull && !(inb(0x3fd) & 1); spins++) __asm__ volatile("pause");
    (void)inb(0x3f8);
}

/* ---- virtio-net: one frame out, one (spanning two merged buffers) in ---- */
#define NET_HDR 12
#define NET_RXBUF 2048
#define NET_RXBUFS 4
static u8 nrx[NET_RXBUFS][NET_RXBUF] __attribute__((aligned(4096)));
static u8 nhdr[NET_HDR] __attribute__((aligned(16)));
static u8 ntx[128] __attribute__((aligned(64)));
static struct vq net_rx, net_tx;

static void net_post_rx(u16 i) {
    net_rx.desc[i].addr = (u64)nrx[i]; net_rx.desc[i].len = NET_RXBUF;
    net_rx.desc[i].flags = F_WRITE; net_rx.desc[i].next = 0;
    vq_post(&net_rx, i);
}

/* Sends header (flags as given) + `len` bytes at `data` as two descriptors. */
static int net_send(u8 flags, u64 data, u32 len) {
    memset_(nhdr, 0, sizeof nhdr); nhdr[0] = flags;
    net_tx.desc[0].addr = (u64)nhdr; net_tx.desc[0].len = NET_HDR; net_tx.desc[0].flags = F_NEXT; net_tx.desc[0].next = 1;
    net_tx.desc[1].addr = data; net_tx.desc[1].len = len; net_tx.desc[1].flags = 0; net_tx.desc[1].next = 0;
    vq_post(&net_tx, 0);
    return vq_wait(&net_tx, 0) < 0 ? -1 : 0;
}

static void net_frame(const u8 *mac, const char *text) {
    memset_(ntx, 0, 60);
    memset_(ntx, 0xff, 6); memcpy_(ntx + 6, mac, 6); ntx[12] = 0x88; ntx[13] = 0xb5;
    for (u32 i = 0; text[i] && i < 40; i++) ntx[14 + i] = (u8)text[i];
}

/* Receives one frame into `out` (merging buffers); returns its length, -1 on error. */
static long net_recv(u8 *out, u32 cap, u32 *bufs) {
    u32 id; long len = vq_wait(&net_rx, &id);
    if (len < NET_HDR || id >= NET_RXBUFS) return -1;
    u32 n = nrx[id][10] | (nrx[id][11] << 8), got = 0;
    *bufs = n;
    for (u32 b = 0; b < n; b++) {
        if (b) { len = vq_wait(&net_rx, &id); if (len < 0 || id >= NET_RXBUFS) return -1; }
        const u8 *src = nrx[id] + (b ? 0 : NET_HDR);
        u32 l = (u32)len - (b ? 0 : NET_HDR);
        if (got + l > cap) return -1;
        memcpy_(out + got, src, l); got += l;
        net_post_rx((u16)id);
    }
    return got;
}

/* Whether the command line holds `word` (a whole space-separated word, e.g. "rmtest.net=passt"). */
static int cmdline_has(const char *cmdline, const char *word) {
    for (const char *s = cmdline; *s; s++) {
        if ((s != cmdline && s[-1] != ' ') || !startswith(s, word)) continue;
        u32 n = 0; while (word[n]) n++;
        if (s[n] == ' ' || !s[n]) return 1;
    }
    return 0;
}

static void putmac(const u8 *m) {
    for (int i = 0; i < 6; i++) { putc_("0123456789abcdef"[m[i] >> 4]); putc_("0123456789abcdef"[m[i] & 15]); if (i < 5) putc_(':'); }
}
static void putip(const u8 *a) { for (int i = 0; i < 4; i++) { putdec(a[i]); if (i < 3) putc_('.'); } }

/* ---- virtio-net against a real passt (rmtest.net=passt): an ARP request for the gateway
 * 10.0.2.2, then a DHCP DISCOVER; the guest prints passt's answers for the host to check.
 * Frames passt sends on its own (its ARP request for the guest, IPv6 neighbour discovery)
 * are reported by EtherType and skipped. ---- */
static u8 nptx[512] __attribute__((aligned(64)));
static u8 nprx[4096];
static const u8 NP_GATEWAY[4] = {10, 0, 2, 2};
#define NP_XID 0x524d5431u /* "RMT1" */

/* Receives frames until `want(frame, len)` holds; 0 on success, -1 after 16 other frames or
 * a silent device. */
static int np_wait(int (*want)(const u8 *, long)) {
    u32 bufs;
    for (int i = 0; i < 16; i++) {
        long n = net_recv(nprx, sizeof nprx, &bufs);
        if (n < 0) return -1;
        if (n >= 14 && want(nprx, n)) return 0;
        puts_("rmguest: net passt skipped ethertype "); puthex(n >= 14 ? (nprx[12] << 8 | nprx[13]) : 0);
        puts_(" len "); putdec(n); putc_('\n');
    }
    return -1;
}

static int np_is_arp_reply(const u8 *f, long n) {
    return n >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[20] == 0 && f[21] == 2 && memeq(f + 28, NP_GATEWAY, 4);
}

static int np_is_dhcp_offer(const u8 *f, long n) {
    if (n < 14 + 20 + 8 + 240 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17) return 0;
    const u8 *udp = f + 14 + (f[14] & 15) * 4, *m = udp + 8;
    if (udp + 8 + 240 > f + n || udp[2] != 0 || udp[3] != 68 || m[0] != 2) return 0;
    return (u32)(m[4] << 24 | m[5] << 16 | m[6] << 8 | m[7]) == NP_XID && m[236] == 99 && m[237] == 130 && m[238] == 83 && m[239] == 99;
}

/* The value of DHCP option `code` in the message `m` of `len` bytes, or 0. */
static const u8 *np_dhcp_option(const u8 *m, long len, u8 code, u8 *optlen) {
    for (long i = 240; i + 1 < len && m[i] != 255;) {
        if (m[i] == 0) { i++; continue; }
        if (m[i] == code && i + 2 + m[i + 1] <= len) { *optlen = m[i + 1]; return m + i + 2; }
        i += 2 + m[i + 1];
    }
    return 0;
}

static u16 np_ip_checksum(const u8 *h, u32 len) {
    u32 sum = 0;
    for (u32 i = 0; i < len; i += 2) sum += (u32)(h[i] << 8 | h[i + 1]);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static void test_net_passt(const u8 *mac) {
    /* ARP who-has 10.0.2.2 from 0.0.0.0 (the guest has no address yet), broadcast. */
    memset_(nptx, 0, 60);
    memset_(nptx, 0xff, 6); memcpy_(nptx + 6, mac, 6); nptx[12] = 0x08; nptx[13] = 0x06;
    u8 *a = nptx + 14;
    a[1] = 1; a[2] = 0x08; a[4] = 6; a[5] = 4; a[7] = 1; /* Ethernet, IPv4, request */
    memcpy_(a + 8, mac, 6); memcpy_(a + 24, NP_GATEWAY, 4);
    if (net_send(0, (u64)nptx, 60)) { fail("net passt arp tx"); return; }
    if (np_wait(np_is_arp_reply)) { fail("net passt arp reply"); return; }
    const u8 *r = nprx + 14;
    puts_("rmguest: net passt arp reply "); putip(r + 14); puts_(" is-at "); putmac(r + 8);
    puts_(" to "); putmac(nprx); putc_('\n');

    /* DHCP DISCOVER from 0.0.0.0:68 to 255.255.255.255:67, asking for a broadcast answer. */
    u32 len = 14 + 20 + 8 + 240 + 3 + 1;
    memset_(nptx, 0, len);
    memset_(nptx, 0xff, 6); memcpy_(nptx + 6, mac, 6); nptx[12] = 0x08; nptx[13] = 0x00;
    u8 *ip = nptx + 14, *udp = ip + 20, *m = udp + 8;
    ip[0] = 0x45; ip[2] = (u8)((len - 14) >> 8); ip[3] = (u8)(len - 14); ip[8] = 64; ip[9] = 17;
    memset_(ip + 16, 0xff, 4);
    u16 sum = np_ip_checksum(ip, 20); ip[10] = (u8)(sum >> 8); ip[11] = (u8)sum;
    udp[1] = 68; udp[3] = 67; udp[4] = (u8)((len - 34) >> 8); udp[5] = (u8)(len - 34); /* no UDP checksum */
    m[0] = 1; m[1] = 1; m[2] = 6;
    m[4] = (u8)(NP_XID >> 24); m[5] = (u8)(NP_XID >> 16); m[6] = (u8)(NP_XID >> 8); m[7] = (u8)NP_XID;
    m[10] = 0x80; /* broadcast */
    memcpy_(m + 28, mac, 6);
    m[236] = 99; m[237] = 130; m[238] = 83; m[239] = 99;
    m[240] = 53; m[241] = 1; m[242] = 1; m[243] = 255; /* DHCPDISCOVER */
    if (net_send(0, (u64)nptx, len)) { fail("net passt dhcp tx"); return; }
    if (np_wait(np_is_dhcp_offer)) { fail("net passt dhcp offer"); return; }
    const u8 *o = nprx + 14 + (nprx[14] & 15) * 4 + 8;
    long olen = (long)(sizeof nprx) - (o - nprx);
    u8 l; const u8 *type = np_dhcp_option(o, olen, 53, &l), *mask = np_dhcp_option(o, olen, 1, &l);
    const u8 *router = np_dhcp_option(o, olen, 3, &l), *server = np_dhcp_option(o, olen, 54, &l);
    if (!type || *type != 2 || !mask || !router || !server) { fail("net passt dhcp options"); return; }
    puts_("rmguest: net passt dhcp offer "); putip(o + 16); puts_(" mask "); putip(mask);
    puts_(" router "); putip(router); puts_(" server "); putip(server); putc_('\n');
    puts_("rmguest: net passt ok\n");
}

static u8 nbig[4096];
static void test_net(u64 base, const char *cmdline) {
    u32 f, bufs;
    if (dev_init(base, (1u << 5) | (1u << 15), &f) || vq_setup(&net_rx, base, 0) || vq_setup(&net_tx, base, 1)) { fail("net init"); return; }
    if (!(f & (1u << 5)) || !(f & (1u << 15))) { fail("net features"); return; }
    dev_ready(base);
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = *(volatile u8 *)(base + CONFIG + i);
    puts_("rmguest: net mac ");
    for (int i = 0; i < 6; i++) { putc_("0123456789abcdef"[mac[i] >> 4]); putc_("0123456789abcdef"[mac[i] & 15]); if (i < 5) putc_(':'); }
    putc_('\n');
    for (u16 i = 0; i < NET_RXBUFS; i++) net_post_rx(i);
    if (cmdline_has(cmdline, "rmtest.net=passt")) { test_net_passt(mac); return; }
    net_frame(mac, "rmguest-net-ping");
    if (net_send(0, (u64)ntx, 60)) { fail("net tx"); return; }
    /* Dropped by the device: an oversized frame and an offload request. */
    if (net_send(0, 0x2000000, 70000)) { fail("net tx oversized"); return; }
    net_frame(mac, "rmguest-net-bad-header");
    if (net_send(1, (u64)ntx, 60)) { fail("net tx bad header"); return; }
    long n = net_recv(nbig, sizeof nbig, &bufs);
    if (n != 3000) { fail("net rx length"); return; }
    if (!memeq(nbig, mac, 6) || nbig[12] != 0x88 || nbig[13] != 0xb5) { fail("net rx header"); return; }
    for (u32 i = 14; i < 3000; i++) if (nbig[i] != (u8)(i * 7 + 1)) { fail("net rx payload"); return; }
    puts_("rmguest: net rx ok "); putdec(n); puts_(" bufs "); putdec(bufs); putc_('\n');
    net_frame(mac, "rmguest-net-bye");
    if (net_send(0, (u64)ntx, 60)) { fail("net tx bye"); return; }
    /* The host answers once it checked its counters. */
    if (net_recv(nbig, sizeof nbig, &bufs) != 60 || !memeq(nbig + 14, "fin", 3)) { fail("net fin"); return; }
    puts_("rmguest: net ok\n");
}

/* ---- virtio-balloon: free page reporting and one inflated page ---- */
static u32 bpfns[4] __attribute__((aligned(16)));
static void test_balloon(u64 base, const char *cmdline) {
    u32 f; struct vq inf, def, rep;
    if (dev_init(base, 1u << 5, &f) || !(f & (1u << 5))) { fail("balloon init"); return; }
    if (vq_setup(&inf, base, 0) || vq_setup(&def, base, 1) || vq_setup(&rep, base, 2)) { fail("balloon queues"); return; }
    dev_ready(base);
    u32 mib = cmdline_num(cmdline, "rmtest.balloon_mib");
    if (!mib) mib = 8;
    int sync = cmdline_num(cmdline, "rmtest.sync") != 0;
    volatile u64 *region = (volatile u64 *)0x2000000; /* 32 MiB */
    u64 words = ((u64)mib << 20) / 8;
    for (u64 i = 0; i < words; i += 512) region[i] = 0x5a5a5a5a00000000ull | i;
    puts_("rmguest: balloon touched "); putdec(mib); putc_('\n');
    if (sync) wait_serial();
    u32 half = mib << 19;
    rep.desc[0].addr = (u64)region; rep.desc[0].len = half; rep.desc[0].flags = F_WRITE | F_NEXT; rep.desc[0].next = 1;
    rep.desc[1].addr = (u64)region + half; rep.desc[1].len = half; rep.desc[1].flags = F_WRITE; rep.desc[1].next = 0;
    vq_post(&rep, 0);
    if (vq_wait(&rep, 0) < 0) { fail("balloon report"); return; }
    for (u64 i = 0; i < words; i += 512) if (region[i]) { fail("balloon report not zeroed"); return; }
    puts_("rmguest: balloon reported "); putdec(mib); puts_(" MiB zeroed\n");
    /* A report outside guest memory is refused but answered. */
    rep.desc[0].addr = 0x100000000ull; rep.desc[0].len = 4096; rep.desc[0].flags = F_WRITE; rep.desc[0].next = 0;
    vq_post(&rep, 0);
    if (vq_wait(&rep, 0) < 0) { fail("balloon bad report"); return; }
    /* Inflate one page, which then reads as zero, and deflate it. */
    region[0] = 0x77;
    bpfns[0] = (u32)((u64)region >> 12);
    inf.desc[0].addr = (u64)bpfns; inf.desc[0].len = 4; inf.desc[0].flags = 0; inf.desc[0].next = 0;
    vq_post(&inf, 0);
    if (vq_wait(&inf, 0) < 0 || region[0] != 0) { fail("balloon inflate"); return; }
    mmio_w(base + CONFIG + 4, 1);
    def.desc[0].addr = (u64)bpfns; def.desc[0].len = 4; def.desc[0].flags = 0; def.desc[0].next = 0;
    vq_post(&def, 0);
    if (vq_wait(&def, 0) < 0) { fail("balloon deflate"); return; }
    mmio_w(base + CONFIG + 4, 0);
    puts_("rmguest: balloon inflate ok\n");
    if (sync) { puts_("rmguest: balloon waiting\n"); wait_serial(); }
}

/* ---- virtio-fs: FUSE requests served by the vhost-user backend (virtiofsd) ---- */
struct fuse_in_hdr { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid; u32 pid; u16 extlen; u16 pad; };
struct fuse_out_hdr { u32 len; int32_t error; u64 unique; };
static u8 fin[40 + 4096 + 64] __attribute__((aligned(64)));
static u8 fout[16 + 4096 + 64] __attribute__((aligned(64)));
static struct vq fs_hiprio, fs_req;
static u64 fuse_unique;

/* One FUSE request (header, two argument blobs) and its reply; returns the reply's error
 * (0 or -errno), or 1000+ on a transport failure. `*outlen` gets the reply's payload length. */
static int fuse_call(u32 opcode, u64 nodeid, const void *a1, u32 l1, const void *a2, u32 l2, u32 outcap, u32 *outlen) {
    struct fuse_in_hdr *h = (struct fuse_in_hdr *)fin;
    memset_(h, 0, sizeof *h);
    h->len = sizeof *h + l1 + l2; h->opcode = opcode; h->unique = ++fuse_unique; h->nodeid = nodeid; h->pid = 1;
    memcpy_(fin + sizeof *h, a1, l1); memcpy_(fin + sizeof *h + l1, a2, l2);
    memset_(fout, 0, 16 + outcap);
    fs_req.desc[0].addr = (u64)fin; fs_req.desc[0].len = h->len; fs_req.desc[0].flags = F_NEXT; fs_req.desc[0].next = 1;
    fs_req.desc[1].addr = (u64)fout; fs_req.desc[1].len = 16 + outcap; fs_req.desc[1].flags = F_WRITE; fs_req.desc[1].next = 0;
    vq_post(&fs_req, 0);
    long n = vq_wait(&fs_req, 0);
    struct fuse_out_hdr *o = (struct fuse_out_hdr *)fout;
    if (n < 16) return 1000;
    if (o->unique != h->unique || o->len > n) return 1001;
    *outlen = o->len - 16;
    return o->error;
}

static void test_fs(u64 base) {
    u32 f, n;
    if (dev_init(base, 0, &f) || vq_setup(&fs_hiprio, base, 0) || vq_setup(&fs_req, base, 1)) { fail("fs init"); return; }
    dev_ready(base);
    char tag[37]; for (int i = 0; i < 36; i++) tag[i] = *(volatile char *)(base + CONFIG + i); tag[36] = 0;
    puts_("rmguest: fs tag "); puts_(tag); puts_(" queues "); putdec(mmio_r(base + CONFIG + 36)); putc_('\n');
    /* FUSE_INIT (26): major 7, minor 31, no flags */
    u32 init_in[4] = { 7, 31, 0, 0 };
    int e = fuse_call(26, 0, init_in, sizeof init_in, 0, 0, 64, &n);
    if (e || n < 8 || ((u32 *)(fout + 16))[0] != 7) { fail("fs FUSE_INIT"); return; }
    puts_("rmguest: fs init 7."); putdec(((u32 *)(fout + 16))[1]); putc_('\n');
    /* FUSE_LOOKUP (1) of hello.txt in the root (node 1) */
    e = fuse_call(1, 1, "hello.txt", 10, 0, 0, 128, &n);
    if (e || n < 128) { fail("fs lookup"); return; }
    u64 node = *(u64 *)(fout + 16), size = *(u64 *)(fout + 16 + 48);
    /* FUSE_OPEN (14) read-only, FUSE_READ (15), FUSE_RELEASE (18) */
    u32 open_in[2] = { 0, 0 };
    if (fuse_call(14, node, open_in, sizeof open_in, 0, 0, 16, &n) || n < 8) { fail("fs open"); return; }
    u64 fh = *(u64 *)(fout + 16);
    u64 read_in[5] = { fh, 0, 4096, 0, 0 };
    e = fuse_call(15, node, read_in, sizeof read_in, 0, 0, 4096, &n);
    if (e || n != size) { fail("fs read"); return; }
    fout[16 + n] = 0;
    for (u32 i = 0; i < n; i++) if (fout[16 + i] == '\n') fout[16 + i] = 0;
    puts_("rmguest: fs read "); puts_((const char *)fout + 16); putc_('\n');
    u64 release_in[3] = { fh, 0, 0 };
    if (fuse_call(18, node, release_in, sizeof release_in, 0, 0, 0, &n)) { fail("fs release"); return; }
    /* FUSE_CREATE (35) from-guest.txt (O_WRONLY|O_CREAT|O_TRUNC, 0644), FUSE_WRITE (16) */
    u32 create_in[4] = { 1 | 0x40 | 0x200, 0100644, 0, 0 };
    if (fuse_call(35, 1, create_in, sizeof create_in, "from-guest.txt", 15, 128 + 16, &n) || n < 144) { fail("fs create"); return; }
    node = *(u64 *)(fout + 16); fh = *(u64 *)(fout + 16 + 128);
    static const char msg[] = "written by the test guest through virtio-fs\n";
    u64 write_in[5] = { fh, 0, ((u64)0 << 32) | (sizeof msg - 1), 0, 0 };
    e = fuse_call(16, node, write_in, sizeof write_in, msg, sizeof msg - 1, 8, &n);
    if (e || n < 4 || *(u32 *)(fout + 16) != sizeof msg - 1) { fail("fs write"); return; }
    release_in[0] = fh;
    if (fuse_call(18, node, release_in, sizeof release_in, 0, 0, 0, &n)) { fail("fs release created"); return; }
    /* An opcode the backend does not know is answered with ENOSYS, and the device carries on. */
    e = fuse_call(4242, 1, 0, 0, 0, 0, 0, &n);
    if (e != -38) { fail("fs unknown opcode"); return; }
    e = fuse_call(1, 1, "missing.txt", 12, 0, 0, 128, &n);
    if (e != -2) { fail("fs lookup of a missing file"); return; }
    puts_("rmguest: fs ok\n");
}

/* ---- snapshots (rmtest.snap=1): state on every device, a counter with the guest clock, then
 * the same devices checked once the VMM restored the machine (seen through the vsock
 * transport reset on the event queue). The host snapshots after "snap tick 3" and restores. ---- */
static inline void wrmsr(u32 msr, u64 v) { __asm__ volatile("wrmsr" :: "c"(msr), "a"((u32)v), "d"((u32)(v >> 32))); }
static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
struct pvclock { u32 version; u32 pad0; u64 tsc_timestamp; u64 system_time; u32 mul; int8_t shift; u8 flags; u8 pad[2]; };
static volatile struct pvclock kvmclock __attribute__((aligned(64)));
/* kvmclock (MSR_KVM_SYSTEM_TIME_NEW): the guest clock the VMM saves and sets on restore. */
static u64 clock_ns(void) {
    u32 v; u64 ns;
    do {
        v = kvmclock.version; mb();
        u64 delta = rdtsc() - kvmclock.tsc_timestamp;
        if (kvmclock.shift < 0) delta >>= -kvmclock.shift; else delta <<= kvmclock.shift;
        ns = kvmclock.system_time + (u64)(((unsigned __int128)delta * kvmclock.mul) >> 32);
        mb();
    } while ((v & 1) || v != kvmclock.version);
    return ns;
}
static u64 find_device(const char *cmdline, u32 want) {
    for (const char *s = cmdline; *s; s++) {
        if (!startswith(s, "virtio_mmio.device=")) continue;
        const char *p = s + 19;
        parse_num(&p); if (*p == 'K') p++;
        if (*p++ != '@') continue;
        u64 base = parse_num(&p);
        if (mmio_r(base + DEVICE_ID) == want) return base;
    }
    return 0;
}
static u32 snap_evbuf[4] __attribute__((aligned(16)));
static u32 snap_pfn[2] __attribute__((aligned(16)));
static void snap_pattern(u32 round) { for (u32 i = 0; i < 4096; i++) bdata[i] = (u8)(i * 13 + round); memcpy_(bcheck, bdata, 4096); }
static void test_snapshot(const char *cmdline) {
    u64 blk = find_device(cmdline, 2), vs = find_device(cmdline, 19), net = find_device(cmdline, 1), bal = find_device(cmdline, 5);
    u32 f, bufs; struct vq bq, evq, inf, def; struct vsock_hdr h; u8 buf[256];
    if (!blk || !vs || !net || !bal) { fail("snap devices"); return; }
    /* disk: a pattern at sector 8 */
    if (dev_init(blk, 1u << 9, &f) || vq_setup(&bq, blk, 0)) { fail("snap blk init"); return; }
    dev_ready(blk);
    snap_pattern(1);
    if (blk_req(&bq, 1, 8, 4096, 1) != 0 || blk_req(&bq, 4, 0, 0, 0) != 0) { fail("snap blk write"); return; }
    puts_("rmguest: snap blk written\n");
    /* balloon: the driver reports 3 pages, one page inflated */
    if (dev_init(bal, 1u << 5, &f) || vq_setup(&inf, bal, 0) || vq_setup(&def, bal, 1)) { fail("snap balloon init"); return; }
    struct vq rep; if (vq_setup(&rep, bal, 2)) { fail("snap balloon rep"); return; }
    dev_ready(bal);
    mmio_w(bal + CONFIG + 4, 3);
    snap_pfn[0] = 0x3000;
    inf.desc[0].addr = (u64)snap_pfn; inf.desc[0].len = 4; inf.desc[0].flags = 0; inf.desc[0].next = 0;
    vq_post(&inf, 0);
    if (vq_wait(&inf, 0) < 0) { fail("snap balloon inflate"); return; }
    puts_("rmguest: snap balloon actual 3\n");
    /* net: one frame out */
    if (dev_init(net, (1u << 5) | (1u << 15), &f) || vq_setup(&net_rx, net, 0) || vq_setup(&net_tx, net, 1)) { fail("snap net init"); return; }
    dev_ready(net);
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = *(volatile u8 *)(net + CONFIG + i);
    for (u16 i = 0; i < NET_RXBUFS; i++) net_post_rx(i);
    net_frame(mac, "rmguest-snap-before");
    if (net_send(0, (u64)ntx, 60)) { fail("snap net tx"); return; }
    puts_("rmguest: snap net sent\n");
    /* vsock: a host connection on rmtest.h2g, an event buffer posted */
    if (dev_init(vs, 0, &f) || vq_setup(&vsock_rx, vs, 0) || vq_setup(&vsock_tx, vs, 1) || vq_setup(&evq, vs, 2)) { fail("snap vsock init"); return; }
    dev_ready(vs);
    guest_cid = mmio_r(vs + CONFIG) | ((u64)mmio_r(vs + CONFIG + 4) << 32);
    for (u16 i = 0; i < RXBUFS; i++) vsock_post_rx(i);
    snap_evbuf[0] = 0xffffffff;
    evq.desc[0].addr = (u64)snap_evbuf; evq.desc[0].len = 4; evq.desc[0].flags = F_WRITE; evq.desc[0].next = 0;
    vq_post(&evq, 0);
    u32 port = cmdline_num(cmdline, "rmtest.h2g");
    puts_("rmguest: snap vsock listening\n");
    int n;
    do { n = vsock_recv(port, &h, buf, sizeof buf); } while (n >= 0 && h.op != OP_REQUEST);
    if (n < 0) { fail("snap vsock request"); return; }
    u32 peer = h.src_port;
    fwd_cnt = 0;
    vsock_send(port, peer, OP_RESPONSE, 0, 0, 0);
    u32 got = 0;
    while (got < 11) { n = vsock_recv(port, &h, buf + got, sizeof buf - got); if (n < 0 || h.op != OP_RW) { fail("snap vsock data"); return; } got += n; }
    vsock_send(port, peer, OP_RW, 0, buf, got);
    puts_("rmguest: snap vsock connected\n");
    /* the counter, on the guest clock, until the transport reset says the machine was restored */
    wrmsr(0x4b564d01, (u64)&kvmclock | 1);
    u64 next = clock_ns(); u32 tick = 0;
    for (;;) {
        mb();
        if (evq.used->idx != evq.last_used) break;
        u64 now = clock_ns();
        if (now >= next) {
            tick++;
            puts_("rmguest: snap tick "); putdec(tick); puts_(" clock_ms "); putdec(now / 1000000); putc_('\n');
            next = now + 100000000ull;
        }
        __asm__ volatile("pause");
    }
    u32 id; long evlen = vq_wait(&evq, &id);
    tick++;
    puts_("rmguest: snap tick "); putdec(tick); puts_(" clock_ms "); putdec(clock_ns() / 1000000); putc_('\n');
    if (evlen != 4 || snap_evbuf[0] != 0) { fail("snap vsock event"); return; }
    puts_("rmguest: snap vsock transport reset\n");
    /* the old connection is gone on the host side: data on it is answered with a reset */
    vsock_send(port, peer, OP_RW, 0, "late", 4);
    do { n = vsock_recv(port, &h, buf, sizeof buf); } while (n >= 0 && !(h.op == OP_RST && h.src_port == peer));
    if (n < 0) { fail("snap vsock old connection"); return; }
    puts_("rmguest: snap vsock old connection reset\n");
    /* the listener keeps serving */
    puts_("rmguest: snap vsock listening again\n");
    do { n = vsock_recv(port, &h, buf, sizeof buf); } while (n >= 0 && h.op != OP_REQUEST);
    if (n < 0) { fail("snap vsock request again"); return; }
    peer = h.src_port; fwd_cnt = 0;
    vsock_send(port, peer, OP_RESPONSE, 0, 0, 0);
    got = 0;
    while (got < 11) { n = vsock_recv(port, &h, buf + got, sizeof buf - got); if (n < 0 || h.op != OP_RW) { fail("snap vsock data again"); return; } got += n; }
    if (!memeq(buf, "hello-again", 11)) { fail("snap vsock content again"); return; }
    vsock_send(port, peer, OP_RW, 0, buf, got);
    puts_("rmguest: snap vsock new connection ok\n");
    /* the disk still holds what was written before, and takes new writes */
    memset_(bdata, 0, 4096);
    if (blk_req(&bq, 0, 8, 4096, 0) != 0 || !memeq(bdata, bcheck, 4096)) { fail("snap blk readback"); return; }
    snap_pattern(2);
    if (blk_req(&bq, 1, 9, 4096, 1) != 0) { fail("snap blk write after"); return; }
    memset_(bdata, 0, 4096);
    if (blk_req(&bq, 0, 9, 4096, 0) != 0 || !memeq(bdata, bcheck, 4096)) { fail("snap blk readback after"); return; }
    puts_("rmguest: snap blk ok\n");
    /* the balloon kept its sizes and its queues */
    u32 actual = mmio_r(bal + CONFIG + 4);
    snap_pfn[0] = 0x3001;
    vq_post(&inf, 0);
    if (vq_wait(&inf, 0) < 0) { fail("snap balloon inflate after"); return; }
    def.desc[0].addr = (u64)snap_pfn; def.desc[0].len = 4; def.desc[0].flags = 0; def.desc[0].next = 0;
    vq_post(&def, 0);
    if (vq_wait(&def, 0) < 0) { fail("snap balloon deflate after"); return; }
    puts_("rmguest: snap balloon actual "); putdec(actual); putc_('\n');
    if (actual != 3) { fail("snap balloon actual"); return; }
    /* the net device reaches the backend's new connection */
    net_frame(mac, "rmguest-snap-after");
    if (net_send(0, (u64)ntx, 60)) { fail("snap net tx after"); return; }
    if (net_recv(nbig, sizeof nbig, &bufs) != 60 || !memeq(nbig + 14, "snap-pong", 9)) { fail("snap net rx after"); return; }
    puts_("rmguest: snap net ok\n");
    for (u32 i = 0; i < 3; i++) {
        u64 until = clock_ns() + 100000000ull;
        while (clock_ns() < until) __asm__ volatile("pause");
        tick++;
        puts_("rmguest: snap tick "); putdec(tick); puts_(" clock_ms "); putdec(clock_ns() / 1000000); putc_('\n');
    }
    puts_("rmguest: snap done\n");
}

/* ---- main ---- */
void guest_main(u64 boot_params) {
    puts_("rmguest: hello\n");
    u64 efer = rdmsr(0xc0000080);
    if (efer & (1 << 10)) puts_("rmguest: long mode ok\n"); else fail("long mode");
    const u8 *bp = (const u8 *)boot_params;
    if (*(const u16 *)(bp + 0x1fe) != 0xaa55 || !memeq(bp + 0x202, "HdrS", 4)) fail("boot_params magic");
    const char *cmdline = (const char *)(u64)*(const u32 *)(bp + 0x228);
    puts_("rmguest: cmdline: "); puts_(cmdline); putc_('\n');
    puts_("rmguest: e820 entries "); putdec(bp[0x1e8]); putc_('\n');
    const u8 *mp = (const u8 *)0x9fc00;
    if (memeq(mp, "_MP_", 4)) {
        const u8 *t = (const u8 *)(u64)*(const u32 *)(mp + 4);
        u16 count = *(const u16 *)(t + 34); const u8 *e = t + 44; u32 cpus = 0;
        for (u16 i = 0; i < count; i++) { if (e[0] == 0) { cpus++; e += 20; } else e += 8; }
        puts_("rmguest: mp cpus "); putdec(cpus); putc_('\n');
    } else fail("mp table");

    if (cmdline_num(cmdline, "rmtest.snap")) test_snapshot(cmdline);
    else for (const char *s = cmdline; *s; s++) {
        if (!startswith(s, "virtio_mmio.device=")) continue;
        const char *p = s + 19;
        parse_num(&p); if (*p == 'K') p++;
        if (*p++ != '@') continue;
        u64 base = parse_num(&p);
        if (mmio_r(base + MAGIC) != 0x74726976 || mmio_r(base + VERSION) != 2) { fail("virtio magic"); continue; }
        u32 id = mmio_r(base + DEVICE_ID);
        puts_("rmguest: virtio device "); putdec(id); puts_(" at "); puthex(base); putc_('\n');
        if (id == 2) test_blk(base);
        else if (id == 4) test_rng(base);
        else if (id == 19) test_vsock(base, cmdline);
        else if (id == 1) test_net(base, cmdline);
        else if (id == 5) test_balloon(base, cmdline);
        else if (id == 26) test_fs(base);
    }
    if (failures == 0) puts_("rmguest: all ok\n");
    puts_("rmguest: resetting\n");
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("hlt");
}
