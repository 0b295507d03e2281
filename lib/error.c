/* mm_strerror and mm_version.  One X-macro table gives every error code the
 * library returns its meaning in mixmode's terms; anything else falls back
 * to the C library's text (libuv's uv_strerror for its own codes). */
#include "mm-internal.h"

#include <errno.h>
#include <string.h>

#define MM__ERRORS(X)                                                        \
  X(EDEADLK, "the call would block the thread that runs the loop it waits "  \
             "for (made on a loop's thread outside any coroutine)")          \
  X(ECANCELED, "the coroutine was cancelled")                                \
  X(ETIMEDOUT, "the deadline passed before the call completed")              \
  X(ESHUTDOWN, "the loop is stopping or stopped; no new requests accepted")  \
  X(EINVAL, "invalid argument: NULL handle or function, bad option, or a "   \
            "handle already joined or detached")                             \
  X(ENOMEM, "out of memory (a stack, a handle or a table could not be "      \
            "allocated)")                                                    \
  X(EAGAIN, "a thread could not be created; try again later")                \
  X(EBUSY, "the loop is running on this thread or another; not allowed now") \
  X(EPERM, "not allowed from this kind of thread")

const char *mm_strerror(int err) {
  switch (-err) {
#define X(code, text) \
  case code:          \
    return #code ": " text;
    MM__ERRORS(X)
#undef X
  case 0:
    return "success";
  }
  if (err < 0 && err > -4096) {
    /* A system or libuv error passed through unchanged. */
    const char *s = uv_strerror(err);
    if (s != NULL && strncmp(s, "Unknown system error", 20) != 0)
      return s;
  }
  return "unknown error";
}

#define MM__STR2(x) #x
#define MM__STR(x) MM__STR2(x)

const char *mm_version(void) {
  return MM__STR(MM_VERSION_MAJOR) "." MM__STR(MM_VERSION_MINOR) "."
      MM__STR(MM_VERSION_PATCH);
}
