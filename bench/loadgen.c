/* The load generator: one thread, epoll, non-blocking sockets.
 *
 * Design: it runs on its own core and must never be what limits a server, so it is C
 * with no per-request allocation: connections are a fixed array, the message is one
 * buffer, latencies go to a growable array of 32-bit samples sorted once at the end.
 * The report proves the headroom: this drives bench/c_echo.c well above the fastest
 * Python server, and it reports its own CPU time, so a saturated load generator shows
 * up as ~1.0 CPU-second per second.
 *
 * Modes:
 *   pingpong  --conns C persistent connections; each sends --size M bytes and waits for
 *             all M to come back before the next (closed loop). --idle N first opens N
 *             connections that only sit there (the "idle" workload).
 *   churn     C slots; each connects, sends M bytes, reads M back, closes, repeats.
 *   bulk      C connections stream 64 KiB writes and count the bytes echoed back.
 *   download  C slots; each connects, sends M bytes (a request), reads what the server
 *             sends until it closes (a file, by sendfile), counts it, closes, repeats.
 *
 * Protocol with the harness (bench/loadgen.py), on stdout, one line each:
 *   "MARK start"  warm-up over, counters reset (the harness samples server CPU now)
 *   "MARK end"    measurement over, counters frozen; the load keeps running until a line
 *                 (or EOF) arrives on stdin, so the harness samples RSS under load
 *   "RESULT {json}" then it closes everything and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 512
/* Bulk costs the load generator as much kernel copying as the server (it must send and
 * receive every byte), so it copies neither way: sendfile() from a memfd hands the
 * kernel page references instead of user bytes, and recv(MSG_TRUNC) on TCP discards
 * what arrived without copying it out (tcp(7)). Measured here, plain send/recv had the
 * load generator at 96% of its core against a Python server. */
#define BULK_CHUNK (256 * 1024)
/* Bulk keeps at most this much unechoed data in flight per connection: enough to fill
 * loopback's socket buffers both ways, small enough that memory stays flat. */
#define BULK_IN_FLIGHT (4u << 20)
/* Idle connections opening at once (connected but not yet answered). Fewer than the
 * stdlib's backlog of 5 can queue, so its accept queue never overflows: the idle workload
 * measures holding connections, not surviving a connect burst (churn measures that).
 * With 512 here the stdlib's ThreadingTCPServer held 105 of 500 after 10 s of SYN
 * retransmits, while 10,000 still open in about a second against the C server. */
#define IDLE_CONNECTS_IN_FLIGHT 4
#define MAX_LATENCY_SAMPLES (50u * 1000 * 1000)

enum mode { PINGPONG, CHURN, BULK, DOWNLOAD };
enum state {
    FREE, CONNECTING, SENDING, RECEIVING, STREAMING,
    IDLE_CONNECTING, IDLE_GREETING, IDLE_OPEN /* an idle connection's life */
};
/* CONNECT: until every persistent connection is open (or connect_timeout_s passes), so a
 * server with a short backlog is measured in its steady state, not in SYN retries. */
enum phase { CONNECT, WARMUP, MEASURE, TAIL };

struct conn {
    int fd;
    enum state state;
    uint32_t interest;
    size_t off;          /* bytes of the current message sent, then received */
    uint64_t started_ns; /* when the current request (or, for churn, the connect) began */
    uint64_t done;       /* requests completed in the measurement window */
    uint64_t in_flight;  /* bulk: bytes sent and not yet echoed */
};

static struct {
    enum mode mode;
    const char *host;
    int port;
    int conns;
    size_t size;
    int idle;
    int sources; /* --sources N: spread connections over 127.0.0.2 .. 127.0.0.(N+1) */
    double warmup_s, duration_s, connect_timeout_s, tail_timeout_s;
} opt = {PINGPONG, "127.0.0.1", 0, 16, 64, 0, 0, 0.5, 2.0, 10.0, 10.0};

static int epfd;
static struct sockaddr_in server;
static char *message;
static char scratch[4 * BULK_CHUNK]; /* bulk never fills it: MSG_TRUNC discards in the kernel */
static int bulk_source = -1; /* a memfd holding BULK_CHUNK bytes, for sendfile() */
static enum phase phase = CONNECT;
static uint64_t requests, bytes_echoed, errors, idle_open, idle_dropped;
static uint32_t *latency; /* units of 100 ns */
static size_t latency_len, latency_cap;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void record_latency(uint64_t ns) {
    if (latency_len == latency_cap) {
        if (latency_cap >= MAX_LATENCY_SAMPLES) return;
        latency_cap = latency_cap ? latency_cap * 2 : 65536;
        uint32_t *grown = realloc(latency, latency_cap * sizeof *latency);
        if (!grown) { latency_cap = latency_len; return; }
        latency = grown;
    }
    uint64_t ticks = ns / 100;
    latency[latency_len++] = ticks > UINT32_MAX ? UINT32_MAX : (uint32_t)ticks;
}

static void set_interest(struct conn *c, uint32_t events) {
    if (c->interest == events || c->interest & EPOLLET) return; /* see CHURN_EVENTS */
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->interest = events;
}

static void drop(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = FREE;
}

/* Start a non-blocking connect; the connection reports EPOLLOUT when it is done. */
/* Each connection leaves a TIME_WAIT socket behind for 60 s, and with ~28,000 of them on
 * one source address (the whole ephemeral range) connect() spends its time searching for
 * a free port: measured here, 70 µs of load generator CPU per churned connection, half of
 * that when connections come from 200 loopback addresses in turn (127.0.0.2, .3, ...;
 * all of 127.0.0.0/8 is loopback). IP_BIND_ADDRESS_NO_PORT leaves the port to connect(). */
static void bind_next_source(int fd) {
    static unsigned next;
    struct sockaddr_in source = {.sin_family = AF_INET};
    source.sin_addr.s_addr = htonl(0x7f000002u + next++ % (unsigned)opt.sources);
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    bind(fd, (struct sockaddr *)&source, sizeof source); /* on failure: the default source */
}

/* Churn pays the load generator's system calls once per connection, as the server does,
 * so it makes as few as it can: one edge-triggered registration for the connection's
 * whole life (no epoll_ctl MOD between connect and reply), no TCP_NODELAY (the first
 * segment of a connection is never held back by Nagle) and no SO_ERROR check (a failed
 * connect makes the send fail). Against bench/c_echo.c this cut the load generator's
 * CPU per connection from about 40 µs to 38: the kernel's TCP work is the rest. */
#define CHURN_EVENTS (EPOLLIN | EPOLLOUT | EPOLLET)

static int open_conn(struct conn *c, enum state connecting) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { errors++; c->state = FREE; return -1; }
    int churn = opt.mode == CHURN && connecting == CONNECTING;
    if (!churn) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    c->started_ns = now_ns();
    c->off = 0;
    c->in_flight = 0;
    if (opt.sources > 0) bind_next_source(c->fd);
    if (connect(c->fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS) {
        errors++;
        drop(c);
        return -1;
    }
    c->state = connecting;
    c->interest = churn ? CHURN_EVENTS : EPOLLOUT;
    struct epoll_event ev = {.events = c->interest, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) { errors++; drop(c); return -1; }
    return 0;
}

static int connect_failed(struct conn *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    return err != 0;
}

/* Send the rest of the current message; returns -1 on error. */
static int send_message(struct conn *c) {
    while (c->off < opt.size) {
        ssize_t n = send(c->fd, message + c->off, opt.size - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) { set_interest(c, EPOLLOUT); return 0; }
            return -1;
        }
        c->off += (size_t)n;
    }
    c->off = 0;
    c->state = RECEIVING;
    set_interest(c, EPOLLIN);
    return 0;
}

static int begin_request(struct conn *c) {
    if (opt.mode != CHURN) c->started_ns = now_ns(); /* churn times from the connect */
    c->off = 0;
    c->state = SENDING;
    return send_message(c);
}

/* One message fully echoed: count it, then (pingpong) go again or (churn) close and reopen. */
static int complete(struct conn *c) {
    uint64_t t = now_ns();
    if (phase == MEASURE) {
        requests++;
        c->done++;
        record_latency(t - c->started_ns);
    }
    if (opt.mode == CHURN || opt.mode == DOWNLOAD) {
        drop(c);
        open_conn(c, CONNECTING); /* if it fails at once, the main loop retries the slot */
        return 0;
    }
    return begin_request(c);
}

/* download: discard the reply as it arrives (MSG_TRUNC: no copy) until the server closes. */
static int receive_download(struct conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, scratch, sizeof scratch, MSG_TRUNC);
        if (n == 0) return complete(c);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        if (phase == MEASURE) bytes_echoed += (uint64_t)n;
    }
}

static int receive_message(struct conn *c) {
    if (opt.mode == DOWNLOAD) return receive_download(c);
    while (c->off < opt.size) {
        size_t want = opt.size - c->off;
        ssize_t n = recv(c->fd, scratch, want < sizeof scratch ? want : sizeof scratch, 0);
        if (n == 0) return -1; /* the server closed mid-exchange */
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return -1;
        }
        c->off += (size_t)n;
    }
    return complete(c);
}

static int stream(struct conn *c, uint32_t events) {
    if (events & EPOLLIN) {
        for (;;) {
            ssize_t n = recv(c->fd, scratch, sizeof scratch, MSG_TRUNC);
            if (n == 0) return -1;
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                return -1;
            }
            c->in_flight -= (uint64_t)n < c->in_flight ? (uint64_t)n : c->in_flight;
            if (phase == MEASURE) {
                bytes_echoed += (uint64_t)n;
                c->done++;
            }
        }
    }
    while (c->in_flight < BULK_IN_FLIGHT) {
        off_t offset = 0;
        ssize_t n = bulk_source >= 0 ? sendfile(c->fd, bulk_source, &offset, BULK_CHUNK)
                                     : send(c->fd, message, BULK_CHUNK, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        c->in_flight += (uint64_t)n;
    }
    set_interest(c, c->in_flight < BULK_IN_FLIGHT ? (EPOLLIN | EPOLLOUT) : EPOLLIN);
    return 0;
}

static void on_event(struct conn *c, uint32_t events) {
    int failed = 0;
    switch (c->state) {
    case IDLE_CONNECTING:
        /* One exchange first: a connection counts as idle-and-held only once the server
         * has accepted it and answered, as a keep-alive client that went quiet. */
        if (connect_failed(c) || send(c->fd, message, opt.size, MSG_NOSIGNAL) != (ssize_t)opt.size) {
            errors++;
            drop(c);
            return;
        }
        c->state = IDLE_GREETING;
        c->off = 0;
        set_interest(c, EPOLLIN);
        return;
    case IDLE_GREETING:
        for (;;) {
            ssize_t n = recv(c->fd, scratch, opt.size - c->off, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
            if (n <= 0) { errors++; drop(c); return; }
            c->off += (size_t)n;
            if (c->off == opt.size) break;
        }
        idle_open++;
        c->state = IDLE_OPEN;
        set_interest(c, EPOLLIN | EPOLLRDHUP); /* only to notice the server dropping it */
        return;
    case IDLE_OPEN:
        idle_dropped++;
        drop(c);
        return;
    case CONNECTING:
        if (!(c->interest & EPOLLET) && connect_failed(c)) { errors++; drop(c); return; }
        if (opt.mode == BULK) {
            c->state = STREAMING;
            failed = stream(c, 0);
        } else {
            failed = begin_request(c);
        }
        break;
    case SENDING:
        failed = send_message(c);
        break;
    case RECEIVING:
        failed = receive_message(c);
        break;
    case STREAMING:
        failed = stream(c, events);
        break;
    case FREE:
        return;
    }
    if (failed) { errors++; drop(c); }
}

static int wait_events(struct epoll_event *events, int timeout_ms) {
    int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
    return n < 0 ? 0 : n; /* EINTR: just go round again */
}

/* Open opt.idle connections, each answered once and then silent; bounded by
 * connect_timeout_s. */
static void open_idle(struct conn *idle, double *elapsed_s) {
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(opt.connect_timeout_s * 1e9);
    struct epoll_event events[MAX_EVENTS];
    int next = 0;
    uint64_t pending = 0; /* connections started and not yet answered (or failed) */
    while ((uint64_t)next < (uint64_t)opt.idle || pending > 0) {
        while (next < opt.idle && pending < IDLE_CONNECTS_IN_FLIGHT) {
            pending += open_conn(&idle[next], IDLE_CONNECTING) == 0;
            next++;
        }
        uint64_t t = now_ns();
        if (t >= deadline) break;
        int n = wait_events(events, (int)((deadline - t) / 1000000) + 1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            enum state before = c->state;
            on_event(c, events[i].events);
            int was_pending = before == IDLE_CONNECTING || before == IDLE_GREETING;
            if (was_pending && (c->state == IDLE_OPEN || c->state == FREE)) pending--;
        }
    }
    *elapsed_s = (double)(now_ns() - start) / 1e9;
}

static double percentile(double p) {
    if (latency_len == 0) return NAN;
    size_t i = (size_t)ceil(p * (double)latency_len);
    i = i == 0 ? 0 : i - 1;
    return latency[i < latency_len ? i : latency_len - 1] / 10.0; /* -> microseconds */
}

static int compare_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void print_number(const char *key, double value, const char *sep) {
    if (isnan(value)) printf("\"%s\": null%s", key, sep);
    else printf("\"%s\": %.3f%s", key, value, sep);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --port P [--host H] [--mode pingpong|churn|bulk|download] [--conns C] [--size M]\n"
            "          [--idle N] [--sources N] [--warmup S] [--duration S] [--connect-timeout S]\n"
            "          [--tail-timeout S]\n",
            argv0);
    exit(2);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage(argv[0]);
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) opt.host = v;
        else if (!strcmp(a, "--port")) opt.port = atoi(v);
        else if (!strcmp(a, "--conns")) opt.conns = atoi(v);
        else if (!strcmp(a, "--size")) opt.size = (size_t)atol(v);
        else if (!strcmp(a, "--idle")) opt.idle = atoi(v);
        else if (!strcmp(a, "--sources")) opt.sources = atoi(v);
        else if (!strcmp(a, "--warmup")) opt.warmup_s = atof(v);
        else if (!strcmp(a, "--duration")) opt.duration_s = atof(v);
        else if (!strcmp(a, "--connect-timeout")) opt.connect_timeout_s = atof(v);
        else if (!strcmp(a, "--tail-timeout")) opt.tail_timeout_s = atof(v);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "pingpong")) opt.mode = PINGPONG;
            else if (!strcmp(v, "churn")) opt.mode = CHURN;
            else if (!strcmp(v, "bulk")) opt.mode = BULK;
            else if (!strcmp(v, "download")) opt.mode = DOWNLOAD;
            else usage(argv[0]);
        } else usage(argv[0]);
    }
    if (opt.port <= 0 || opt.conns < 1 || opt.size < 1 || opt.idle < 0 || opt.sources < 0 ||
        opt.sources > 250 || opt.duration_s <= 0)
        usage(argv[0]);
    if (opt.mode == BULK) opt.size = BULK_CHUNK;
}

static void open_bulk_source(void) {
    int fd = memfd_create("loadgen-bulk", MFD_CLOEXEC);
    if (fd < 0) return; /* no memfd: bulk falls back to send() */
    if (write(fd, message, opt.size) != (ssize_t)opt.size) { close(fd); return; }
    bulk_source = fd;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct rlimit rl; /* idle connections: take the hard limit of descriptors */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }

    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &server.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    message = malloc(opt.size);
    if (!message) return 1;
    for (size_t i = 0; i < opt.size; i++) message[i] = (char)('a' + i % 26);
    if (opt.mode == BULK) open_bulk_source();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) { perror("epoll_create1"); return 1; }

    struct conn *conns = calloc((size_t)opt.conns + (size_t)opt.idle, sizeof *conns);
    if (!conns) return 1;
    for (int i = 0; i < opt.conns + opt.idle; i++) conns[i].fd = -1;
    struct conn *active = conns, *idle = conns + opt.conns;

    double idle_connect_s = 0;
    if (opt.idle > 0) open_idle(idle, &idle_connect_s);
    for (int i = 0; i < opt.conns; i++) open_conn(&active[i], CONNECTING);

    uint64_t start = now_ns();
    uint64_t connect_deadline = start + (uint64_t)(opt.connect_timeout_s * 1e9);
    uint64_t measure_at = 0, end_at = 0;
    double active_connect_s = 0;
    uint64_t tail_deadline = 0, measured_ns = 0;
    double cpu_start = 0, cpu_used = 0;
    uint64_t frozen_requests = 0, frozen_bytes = 0, frozen_errors = 0, stalled = 0;
    int stdin_registered = 0, acknowledged = 0;
    struct epoll_event events[MAX_EVENTS];

    while (!acknowledged) {
        uint64_t t = now_ns();
        if (phase == CONNECT) {
            int connecting = 0; /* churn connects all the time: it has no such phase */
            for (int i = 0; i < opt.conns && opt.mode != CHURN; i++)
                connecting += active[i].state == CONNECTING;
            if (!connecting || t >= connect_deadline) {
                phase = WARMUP;
                active_connect_s = (double)(t - start) / 1e9;
                measure_at = t + (uint64_t)(opt.warmup_s * 1e9);
                end_at = measure_at + (uint64_t)(opt.duration_s * 1e9);
            }
        }
        if (phase == WARMUP && t >= measure_at) {
            phase = MEASURE;
            requests = bytes_echoed = errors = 0;
            latency_len = 0;
            for (int i = 0; i < opt.conns; i++) active[i].done = 0;
            cpu_start = cpu_seconds();
            measure_at = t;
            printf("MARK start\n");
        } else if (phase == MEASURE && t >= end_at) {
            phase = TAIL;
            measured_ns = t - measure_at;
            cpu_used = cpu_seconds() - cpu_start;
            frozen_requests = requests;
            frozen_bytes = bytes_echoed;
            frozen_errors = errors;
            for (int i = 0; i < opt.conns; i++) stalled += active[i].done == 0;
            tail_deadline = t + (uint64_t)(opt.tail_timeout_s * 1e9);
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
            stdin_registered = epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &ev) == 0;
            printf("MARK end\n");
            if (!stdin_registered) acknowledged = 1; /* stdin is a file or a tty: no ack */
        } else if (phase == TAIL && t >= tail_deadline) {
            acknowledged = 1;
        }
        /* Churn (and download) slots whose reconnect failed at once: retry, and wait
         * briefly if any did. */
        int retrying = 0;
        if (opt.mode == CHURN || opt.mode == DOWNLOAD)
            for (int i = 0; i < opt.conns; i++)
                if (active[i].state == FREE) retrying |= open_conn(&active[i], CONNECTING) < 0;
        uint64_t next = phase == CONNECT  ? connect_deadline
                        : phase == WARMUP ? measure_at
                        : phase == MEASURE ? end_at
                                           : tail_deadline;
        t = now_ns();
        int timeout_ms = next > t ? (int)((next - t) / 1000000) + 1 : 0;
        if (retrying && timeout_ms > 1) timeout_ms = 1;
        int n = wait_events(events, timeout_ms);
        for (int i = 0; i < n; i++) {
            if (!events[i].data.ptr) { acknowledged = 1; continue; } /* stdin: line or EOF */
            on_event(events[i].data.ptr, events[i].events);
        }
    }

    qsort(latency, latency_len, sizeof *latency, compare_u32);
    double seconds = (double)measured_ns / 1e9;
    printf("RESULT {");
    printf("\"requests\": %llu, \"bytes\": %llu, \"errors\": %llu, ",
           (unsigned long long)frozen_requests, (unsigned long long)frozen_bytes,
           (unsigned long long)frozen_errors);
    print_number("seconds", seconds, ", ");
    print_number("loadgen_cpu_s", cpu_used, ", ");
    printf("\"conns\": %d, \"stalled_conns\": %llu, ", opt.conns, (unsigned long long)stalled);
    printf("\"idle_requested\": %d, \"idle_open\": %llu, \"idle_dropped\": %llu, ", opt.idle,
           (unsigned long long)idle_open, (unsigned long long)idle_dropped);
    print_number("idle_connect_s", idle_connect_s, ", ");
    print_number("connect_s", active_connect_s, ", ");
    printf("\"latency_us\": {");
    print_number("p50", percentile(0.50), ", ");
    print_number("p90", percentile(0.90), ", ");
    print_number("p99", percentile(0.99), ", ");
    print_number("p99.9", percentile(0.999), ", ");
    print_number("max", latency_len ? latency[latency_len - 1] / 10.0 : NAN, "");
    printf("}}\n");
    fflush(stdout);
    for (int i = 0; i < opt.conns + opt.idle; i++) if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
