/* http-client: see http-client.h. */
#define _GNU_SOURCE             /* memmem */
#include "http-client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int http_connect(http_conn_t *c, const char *host, int port) {
  c->len = 0;
  c->tcp = NULL;
  int r = mm_tcp_connect(&c->tcp, host, port);
  if (r == 0)
    mm_tcp_nodelay(c->tcp, true);       /* requests go out at once */
  return r;
}

void http_close(http_conn_t *c) {
  if (c->tcp != NULL)
    mm_tcp_close(c->tcp);
  c->tcp = NULL;
  c->len = 0;
}

/* Reads more bytes into c->buf.  0, or -EPIPE at the end of the stream,
 * -EMSGSIZE when the buffer is full, or mm_tcp_read's error. */
static int fill(http_conn_t *c) {
  if (c->len == sizeof c->buf)
    return -EMSGSIZE;
  ssize_t n = mm_tcp_read(c->tcp, c->buf + c->len, sizeof c->buf - c->len);
  if (n == 0)
    return -EPIPE;
  if (n < 0)
    return (int)n;
  c->len += (size_t)n;
  return 0;
}

static void consume(http_conn_t *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* The value of header name in the head [p, end), or NULL. */
static const char *header(const char *p, const char *end, const char *name) {
  size_t nlen = strlen(name);
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL)
      break;
    if ((size_t)(eol - p) > nlen && strncasecmp(p, name, nlen) == 0 &&
        p[nlen] == ':')
      return p + nlen + 1;
    p = eol + 1;
  }
  return NULL;
}

int http_get(http_conn_t *c, const char *path, int *status, char *body,
             size_t body_cap) {
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
  if (n < 0 || (size_t)n >= sizeof req)
    return -ENAMETOOLONG;
  int r = mm_tcp_write(c->tcp, req, (size_t)n);
  if (r < 0)
    return r;

  /* The head: up to the empty line. */
  char *end;
  while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4)) == NULL)
    if ((r = fill(c)) < 0)
      return r;
  size_t head_len = (size_t)(end - c->buf) + 4;
  int code;
  if (sscanf(c->buf, "HTTP/1.%*d %d", &code) != 1)
    return -EPROTO;
  const char *cl = header(c->buf, c->buf + head_len, "Content-Length");
  if (cl == NULL)
    return -EPROTO;
  size_t left = strtoul(cl, NULL, 10);
  consume(c, head_len);

  /* The body, kept up to body_cap - 1 bytes. */
  size_t kept = 0;
  while (left > 0) {
    if (c->len == 0 && (r = fill(c)) < 0)
      return r;
    size_t take = c->len < left ? c->len : left;
    if (body != NULL && kept + 1 < body_cap) {
      size_t room = body_cap - 1 - kept;
      size_t copy = take < room ? take : room;
      memcpy(body + kept, c->buf, copy);
      kept += copy;
    }
    consume(c, take);
    left -= take;
  }
  if (body != NULL && body_cap > 0)
    body[kept] = '\0';
  *status = code;
  return 0;
}
