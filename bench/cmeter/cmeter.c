/* cmeter: N SDM630 meters over Modbus TCP, one TCP port each, served by one process on libmodbus.
 *
 * Why C: the benches measure Python Modbus clients near their limit; pymodbus's server (and our asyncio
 * simulator) top out near 3-10k requests/s here, so they, not the client, would be measured.
 *
 * One epoll loop owns every listening socket and every connection and cuts requests out of the byte
 * stream (MBAP length); one libmodbus context answers each (modbus_set_socket, modbus_reply) from one
 * register map shared by all meters: input registers [0, INPUT_COUNT) (FC04) and holding registers
 * [HOLDING_START, HOLDING_START + HOLDING_COUNT) (FC03), loaded from an image file written by
 * bench/cmeter/__init__.py with the values the Python simulator gives (so a read here equals a read
 * there). Any unit id is answered.
 *
 *   cmeter IMAGE N      binds N ports on 127.0.0.1 (chosen by the kernel), prints "PORTS p1 p2 ..." and
 *                       serves until SIGTERM/SIGINT; on SIGUSR1 prints "STATS requests registers errors".
 *
 * Image file: INPUT_COUNT then HOLDING_COUNT big-endian uint16 words.
 */
#include <errno.h>
#include <modbus.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#define INPUT_COUNT 0xD0      /* SDM630 measurements 0x0000..0x00CF (line voltages end at 0x00CD) */
#define HOLDING_START 0xFC00  /* serial number, uint32 */
#define HOLDING_COUNT 2
#define LISTENER_TAG (1ULL << 32)
#define MAX_FDS 65536

struct conn { int len; uint8_t buf[4 * MODBUS_TCP_MAX_ADU_LENGTH]; };  /* bytes received, not yet answered */
static struct conn *conns[MAX_FDS];

static volatile sig_atomic_t stop_flag = 0, stats_flag = 0;
static void on_stop(int sig) { (void)sig; stop_flag = 1; }
static void on_stats(int sig) { (void)sig; stats_flag = 1; }

static int listen_any(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 64) < 0) { close(fd); return -1; }
    return fd;
}

static int port_of(int fd) {
    struct sockaddr_in a; socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s IMAGE N\n", argv[0]); return 2; }
    int n = atoi(argv[2]);
    if (n < 1) { fprintf(stderr, "cmeter: N must be >= 1, got %s\n", argv[2]); return 2; }

    struct rlimit rl;  /* two descriptors per meter (listener + connection) and a few more */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }

    modbus_mapping_t *map = modbus_mapping_new_start_address(0, 0, 0, 0, HOLDING_START, HOLDING_COUNT, 0,
                                                             INPUT_COUNT);
    if (!map) { fprintf(stderr, "cmeter: mapping: %s\n", modbus_strerror(errno)); return 1; }
    FILE *img = fopen(argv[1], "rb");
    if (!img) { fprintf(stderr, "cmeter: cannot open image %s: %s\n", argv[1], strerror(errno)); return 1; }
    uint8_t buf[2 * (INPUT_COUNT + HOLDING_COUNT)];
    if (fread(buf, 1, sizeof buf, img) != sizeof buf) {
        fprintf(stderr, "cmeter: image %s: expected %zu bytes\n", argv[1], sizeof buf); return 1;
    }
    fclose(img);
    for (int i = 0; i < INPUT_COUNT; i++) map->tab_input_registers[i] = (uint16_t)(buf[2 * i] << 8 | buf[2 * i + 1]);
    for (int i = 0; i < HOLDING_COUNT; i++) {
        int o = 2 * (INPUT_COUNT + i);
        map->tab_registers[i] = (uint16_t)(buf[o] << 8 | buf[o + 1]);
    }

    modbus_t *ctx = modbus_new_tcp("127.0.0.1", 0);  /* never connects: only parses and answers */
    if (!ctx) { fprintf(stderr, "cmeter: context: %s\n", modbus_strerror(errno)); return 1; }

    int ep = epoll_create1(0);
    printf("PORTS");
    for (int i = 0; i < n; i++) {
        int fd = listen_any();
        if (fd < 0) { fprintf(stderr, "cmeter: listen (meter %d): %s\n", i, strerror(errno)); return 1; }
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = LISTENER_TAG | (uint32_t)fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        printf(" %d", port_of(fd));
    }
    printf("\n");
    fflush(stdout);

    struct sigaction sa = {0};
    sa.sa_handler = on_stop; sigaction(SIGTERM, &sa, NULL); sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_stats; sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* the signals are delivered only inside epoll_pwait: one that comes while a request is being answered
       waits for the next wait instead of slipping between the flag check and a wait with no event to end */
    sigset_t blocked, waiting;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM); sigaddset(&blocked, SIGINT); sigaddset(&blocked, SIGUSR1);
    sigprocmask(SIG_BLOCK, &blocked, &waiting);

    unsigned long long requests = 0, registers = 0, errors = 0;
    struct epoll_event events[256];
    while (!stop_flag) {
        if (stats_flag) {
            stats_flag = 0;
            printf("STATS %llu %llu %llu\n", requests, registers, errors);
            fflush(stdout);
        }
        int k = epoll_pwait(ep, events, 256, -1, &waiting);
        if (k < 0) { if (errno == EINTR) continue; perror("cmeter: epoll_pwait"); return 1; }
        for (int e = 0; e < k; e++) {
            uint64_t tag = events[e].data.u64;
            int fd = (int)(tag & 0xffffffffu);
            if (tag & LISTENER_TAG) {
                int c = accept(fd, NULL, NULL);
                if (c < 0) continue;
                int one = 1;
                setsockopt(c, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one);
                if (c >= MAX_FDS) { close(c); continue; }
                if (!conns[c] && !(conns[c] = calloc(1, sizeof(struct conn)))) { close(c); continue; }
                conns[c]->len = 0;
                struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint32_t)c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                continue;
            }
            /* framing here, not modbus_receive: libmodbus waits with select(), whose fd_set overflows
               past descriptor 1023, and a thousand meters need two thousand descriptors */
            struct conn *c = conns[fd];
            ssize_t got = recv(fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (got <= 0) {
                if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                c->len = 0;
                continue;
            }
            c->len += (int)got;
            int at = 0;
            while (c->len - at >= 7) {
                int adu = 6 + (c->buf[at + 4] << 8 | c->buf[at + 5]);
                if (adu < 8 || adu > MODBUS_TCP_MAX_ADU_LENGTH) { c->len = at = 0; break; }  /* garbage */
                if (c->len - at < adu) break;
                uint8_t *q = c->buf + at;
                requests++;
                if (q[7] == 3 || q[7] == 4) registers += (unsigned)(q[10] << 8 | q[11]);
                modbus_set_socket(ctx, fd);
                if (modbus_reply(ctx, q, adu, map) < 0) errors++;
                at += adu;
            }
            if (at > 0) { memmove(c->buf, c->buf + at, (size_t)(c->len - at)); c->len -= at; }
        }
    }
    printf("STATS %llu %llu %llu\n", requests, registers, errors);
    fflush(stdout);
    modbus_free(ctx);
    modbus_mapping_free(map);
    return 0;
}
