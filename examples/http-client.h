/* http-client: the few lines of HTTP/1.1 client that the examples' load
 * tools need, on mm_tcp.  One GET at a time per connection, keep-alive,
 * responses framed by Content-Length (what sqlite-server sends).  From
 * coroutines only, as mm_tcp.  Not a general HTTP client: no chunked
 * encoding, no redirects, no TLS.
 */
#ifndef EXAMPLES_HTTP_CLIENT_H
#define EXAMPLES_HTTP_CLIENT_H

#include <mixmode.h>

typedef struct http_conn {
  mm_tcp_t *tcp;
  size_t    len;              /* bytes of buf read but not yet used */
  char      buf[16384];
} http_conn_t;

/* Connects c to host:port.  0 or a negative errno value. */
int http_connect(http_conn_t *c, const char *host, int port);

/* Sends "GET path" and reads the whole response.  *status gets its status
 * code; up to body_cap - 1 bytes of the body go to body, NUL-terminated
 * (body may be NULL); the rest of the body is read and dropped.  The
 * connection stays open for the next request.  0 or a negative errno
 * value (-EPROTO: not an HTTP response this client understands, -EPIPE:
 * the server closed the connection). */
int http_get(http_conn_t *c, const char *path, int *status, char *body,
             size_t body_cap);

/* Closes the connection (a no-op if it is not open). */
void http_close(http_conn_t *c);

#endif /* EXAMPLES_HTTP_CLIENT_H */
