/* The practical ceiling: a minimal single-threaded epoll echo server.
 *
 * Design: one thread, level-triggered epoll, non-blocking sockets, accept4() in a loop
 * until EAGAIN, read up to 64 KiB and write it straight back. When the peer is slower
 * than we are, the unsent rest is kept and the connection stops reading until it has
 * drained, so memory per connection stays bounded by one read. It does what a Python
 * echo handler does and nothing else, so the distance to it is the price of the
 * interpreter and the concurrency model, not of the kernel.
 *
 * --http: instead of echoing, answer every request (counted by its "\r\n\r\n") with a
 * fixed HTTP/1.1 keep-alive response of the same shape as bench/peers.py's handler.
 *
 * Usage: c_echo [--host 127.0.0.1] [--port 0] [--http]
 * Prints "READY <host> <port>" once listening; runs until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUF_BYTES (256 * 1024) /* as asyncio and uvloop read: fewer syscalls per MB */
#define MAX_EVENTS 256

static const char HTTP_RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Server: c-ceiling\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 13\r\n"
    "\r\n"
    "Hello, world\n";

struct conn {
    int fd;
    char *pending;     /* bytes read but not yet written back */
    size_t pending_len;
    size_t pending_off;
    unsigned match;    /* --http: how much of "\r\n\r\n" the stream ended with */
    int sending;       /* --download: the file is on its way */
    off_t sent;        /* --download: how much of it */
};

static int http_mode;
static int download_fd = -1; /* --download PATH: every connection gets this file, then EOF */
static off_t download_bytes;
static int epfd;
static char buf[BUF_BYTES];

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void close_conn(struct conn *c) {
    close(c->fd); /* also removes it from the epoll set */
    free(c->pending);
    free(c);
}

/* Write what is pending; returns 0 when all is out, 1 when the socket is full, -1 on error. */
static int flush_pending(struct conn *c) {
    while (c->pending_off < c->pending_len) {
        ssize_t n = send(c->fd, c->pending + c->pending_off, c->pending_len - c->pending_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
        }
        c->pending_off += (size_t)n;
    }
    c->pending_len = c->pending_off = 0;
    return 0;
}

static int queue_bytes(struct conn *c, const char *data, size_t len) {
    char *grown = realloc(c->pending, c->pending_len + len);
    if (!grown) return -1;
    c->pending = grown;
    memcpy(c->pending + c->pending_len, data, len);
    c->pending_len += len;
    return 0;
}

/* Count complete requests in data: occurrences of "\r\n\r\n", across reads too. */
static size_t count_requests(struct conn *c, const char *data, size_t len) {
    static const char end[] = "\r\n\r\n";
    size_t found = 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] == end[c->match]) {
            if (++c->match == 4) { found++; c->match = 0; }
        } else {
            c->match = data[i] == '\r' ? 1 : 0;
        }
    }
    return found;
}

static void set_interest(struct conn *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
}

/* Send data now, keeping whatever the socket would not take; -1 on error. */
static int send_or_keep(struct conn *c, const char *data, size_t len) {
    if (c->pending_len == 0) { /* the usual case: nothing queued, no copy */
        while (len > 0) {
            ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                return -1;
            }
            data += n;
            len -= (size_t)n;
        }
    }
    return len > 0 ? queue_bytes(c, data, len) : 0;
}

/* --download: sendfile() until the socket is full (then wait for EPOLLOUT) or all is sent. */
static void send_download(struct conn *c) {
    while (c->sent < download_bytes) {
        ssize_t n = sendfile(c->fd, download_fd, &c->sent, (size_t)(download_bytes - c->sent));
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) { set_interest(c, EPOLLOUT); return; }
            break;
        }
    }
    close_conn(c);
}

static void on_readable(struct conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n == 0) { close_conn(c); return; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            close_conn(c);
            return;
        }
        int failed = 0;
        if (download_fd >= 0) { /* the request's content does not matter */
            if (!c->sending) { c->sending = 1; send_download(c); }
            return;
        }
        if (http_mode) {
            size_t requests = count_requests(c, buf, (size_t)n);
            for (size_t i = 0; i < requests && !failed; i++)
                failed = send_or_keep(c, HTTP_RESPONSE, sizeof HTTP_RESPONSE - 1);
        } else {
            failed = send_or_keep(c, buf, (size_t)n);
        }
        if (failed) { close_conn(c); return; }
        if (c->pending_len) { set_interest(c, EPOLLOUT); return; } /* stop reading until drained */
        if ((size_t)n < sizeof buf) return; /* the socket is most likely empty now */
    }
}

static void on_writable(struct conn *c) {
    if (c->sending) { send_download(c); return; }
    int state = flush_pending(c);
    if (state < 0) close_conn(c);
    else if (state == 0) set_interest(c, EPOLLIN);
}

static void on_acceptable(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return; /* EAGAIN, or EMFILE: the connection waits in the backlog */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) { close(fd); continue; }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) close_conn(c);
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--http")) http_mode = 1;
        else if (!strcmp(argv[i], "--download") && i + 1 < argc) {
            download_fd = open(argv[++i], O_RDONLY | O_CLOEXEC);
            struct stat st;
            if (download_fd < 0 || fstat(download_fd, &st) < 0) die("--download");
            download_bytes = st.st_size;
            signal(SIGPIPE, SIG_IGN); /* sendfile() has no MSG_NOSIGNAL; a client may leave */
        }
        else {
            fprintf(stderr, "usage: %s [--host H] [--port P] [--http | --download PATH]\n", argv[0]);
            return 2;
        }
    }
    /* The idle workload holds ~10,000 connections: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); return 2; }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(listener, SOMAXCONN) < 0) die("listen");
    socklen_t addr_len = sizeof addr;
    if (getsockname(listener, (struct sockaddr *)&addr, &addr_len) < 0) die("getsockname");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    /* The listener's data.ptr is NULL: connections always have a struct behind them. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) < 0) die("epoll_ctl listener");

    printf("READY %s %d\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) on_acceptable(listener);
            else if (events[i].events & EPOLLOUT) on_writable(c);
            else on_readable(c);
        }
    }
}
