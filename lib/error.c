/* mm_strerror and mm_version.  One X-macro table gives every error code the
 * library returns its meaning in mixmode's terms; anything else falls back
 * to the C library's text (libuv's uv_strerror for its own codes). */
#include "mm-internal.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#define MM__ERRORS(X)                                                        \
  X(EDEADLK, "the call would block a thread that the loop it waits for "    \
             "needs (a loop's thread outside any coroutine, a borrowed "    \
             "loop's own thread, or a worker, lane or caller thread "        \
             "serving that loop)")                                          \
  X(ECANCELED, "the coroutine was cancelled")                                \
  X(ETIMEDOUT, "the deadline passed before the call completed")              \
  X(ESHUTDOWN, "the loop is stopping or stopped; no new requests accepted")  \
  X(EINVAL, "invalid argument: NULL handle or function, bad option, or a "   \
            "handle already joined or detached")                             \
  X(ENOMEM, "out of memory (a stack, a handle or a table could not be "      \
            "allocated)")                                                    \
  X(EAGAIN, "not now, try again: a thread could not be created (a "       \
            "system limit on threads or memory), or mm_chan_try_send "      \
            "found the channel full, or mm_chan_try_recv found it empty")   \
  X(EBUSY, "busy: the loop is running on this thread or another, the "     \
           "channel has waiters, the group is being waited for, or "        \
           "another coroutine of the loop waits on the file descriptor, "   \
           "or a wake is pending for the coroutine already; not allowed "   \
           "now")                                                           \
  X(EPIPE, "the channel is closed (and, for a receive, drained)")          \
  X(EPERM, "not allowed from this kind of thread")                          \
  X(ECHILD, "the loop was inherited across fork(): it belongs to the "       \
            "parent process; a child can only free it (mm_loop_free)")

const char *mm_strerror(int err) {
  switch (err) {
#define X(code, text) \
  case -code:         \
    return #code ": " text;
    MM__ERRORS(X)
#undef X
  case 0:
    return "success";
  /* libuv's getaddrinfo codes that a name lookup (mm_tcp_connect,
   * mm_tcp_listen) gives most, said plainly. */
  case UV_EAI_NONAME:
    return "EAI_NONAME: the host name (or service) is not known to the "
           "resolver";
  case UV_EAI_AGAIN:
    return "EAI_AGAIN: the name could not be resolved now (the name "
           "server did not answer); try again later";
  case UV_EAI_FAIL:
    return "EAI_FAIL: the name server failed for good";
  case UV_EAI_NODATA:
    return "EAI_NODATA: the host name has no address of the kind asked";
  }
  if (err < 0) {
#ifdef HAVE_STRERRORDESC_NP
    /* A system error passed through unchanged: its static description. */
    const char *s = err > INT_MIN ? strerrordesc_np(-err) : NULL;
    if (s != NULL)
      return s;
#endif
    /* libuv's own codes (getaddrinfo, EOF, charset).  uv_strerror mallocs
     * a string for codes it does not know, so ask only about these. */
    bool eai = err <= UV_EAI_ADDRFAMILY && err >= UV_EAI_PROTOCOL &&
               err != -3012;  /* the one unassigned code in that range */
    if (eai || err == UV_EOF || err == UV_ECHARSET)
      return uv_strerror(err);
  }
  return "unknown error";
}

#define MM__STR2(x) #x
#define MM__STR(x) MM__STR2(x)

const char *mm_version(void) {
  return MM__STR(MM_VERSION_MAJOR) "." MM__STR(MM_VERSION_MINOR) "."
      MM__STR(MM_VERSION_PATCH);
}
